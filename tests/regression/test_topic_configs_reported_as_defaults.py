"""Topic configs are read back with every source and no key filter
(stream/kafka/topics.py:read_topic_configs, correction K8): the embedded broker reports
a topic's configs as defaults, which kafka-python's default filter ("modified") drops,
so a compacted topic read that way looks unconfigured and the start check would refuse
every state topic the worker itself created (docs/embedded-broker.md)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from stream.kafka.topics import TopicSpec, admin_client, ensure_topics, read_topic_configs

pytestmark = pytest.mark.integration


def test_a_compacted_topic_reads_back_compacted(dev_stack: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    state = TopicSpec(f"state-{tag}", {"cleanup.policy": "compact"})
    ensure_topics(dev_stack.bootstrap_servers, [state, f"plain-{tag}"], 2)
    ensure_topics(dev_stack.bootstrap_servers, [state], 2)  # exists: checked, accepted

    admin = admin_client(dev_stack.bootstrap_servers)
    try:
        configs = read_topic_configs(admin, [state.name, f"plain-{tag}"])
    finally:
        admin.close()
    assert configs[state.name]["cleanup.policy"] == "compact"
    assert "cleanup.policy" not in configs[f"plain-{tag}"]  # unreported: the default
