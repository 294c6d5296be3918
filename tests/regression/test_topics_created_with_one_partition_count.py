"""Every topic is created up front with the configured partition count, and a topic
with another count is refused before the worker starts (stream/kafka/topics.py): the
embedded broker auto-creates topics with 4 partitions whatever is configured, and Faust
crashes at assignment (`PartitionsMismatch`) when a source topic and its table's
changelog differ (docs/embedded-broker.md)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from stream.kafka.topics import admin_client, ensure_topics

pytestmark = pytest.mark.integration


def test_topics_get_the_configured_count_and_a_mismatch_is_refused(dev_stack: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    names = [f"source-{tag}", f"source-{tag}-changelog"]
    assert ensure_topics(dev_stack.bootstrap_servers, names, 3) == names
    assert ensure_topics(dev_stack.bootstrap_servers, names, 3) == []  # idempotent

    admin = admin_client(dev_stack.bootstrap_servers)
    try:
        counts = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(names)}
    finally:
        admin.close()
    assert counts == {name: 3 for name in names}

    # Was KeyError('topic') on kafka-python 3, which names the field "name".
    with pytest.raises(ValueError, match=f"topic source-{tag} has 3 partitions"):
        ensure_topics(dev_stack.bootstrap_servers, names, 4)
