"""Every topic the worker creates has the configs its role needs, and a state topic
that is not compacted is refused on start, in one line (issue 14, item 1).

The embedded broker never compacts (docs/embedded-broker.md), so these tests assert
what the worker asks for, read back over the wire, and the start check; that Apache
Kafka then compacts is Kafka's part."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from stream.dev.services import ServiceError
from stream.items.sync import decode_vectors
from stream.kafka.producer import replay
from stream.kafka.topics import admin_client, ensure_topics
from tests.conftest import RunningWorker, read_topic, unique_settings

pytestmark = pytest.mark.integration


def reported_configs(bootstrap_servers: str, names: list[str]) -> dict[str, dict[str, str]]:
    """What the broker reports for each topic, every config of every source."""
    admin = admin_client(bootstrap_servers)
    try:
        answer = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names],
            config_filter="all",
        )
    finally:
        admin.close()
    return {
        name: {key: entry["value"] for key, entry in configs.items()}
        for name, configs in answer["topic"].items()
    }


def test_state_topics_are_compacted_streams_kept_and_records_fit(worker_factory: Any) -> None:
    worker = worker_factory(model="torch")
    settings = worker.settings
    configs = reported_configs(settings.bootstrap_servers, settings.topics())
    # Before issue 14 every topic was created with the broker's defaults: {} for each.
    state = {settings.changelog_topic, settings.item_vectors_topic, settings.admin_topic}
    state.add(settings.items_topic)  # the catalogue: each item's latest record (issue 15)
    limit = str(max(1_000_000, settings.max_event_bytes + 65_536))
    for name in settings.topics():
        assert configs[name].get("max.message.bytes") == limit, name
        if name in state:
            assert configs[name].get("cleanup.policy") == "compact", name
        else:
            assert configs[name].get("cleanup.policy") == "delete", name
            assert configs[name].get("retention.ms") == str(7 * 24 * 3600 * 1000), name

    # Compaction keeps each key's last record: an item-vectors record holds one item,
    # keyed by its id (Apache Kafka refuses an unkeyed record on a compacted topic).
    events = [
        {"user_id": f"u{i % 7}", "item_id": f"i{i % 11}", "event_id": f"e{i}"} for i in range(60)
    ]
    replay(
        events,
        bootstrap_servers=settings.bootstrap_servers,
        topic=settings.clicks_topic,
        progress=False,
    )
    assert len(read_topic(settings, settings.recommendations_topic, until=60)) == 60
    time.sleep(1)  # item owners broadcast after the recommendations
    records = read_topic(settings, settings.item_vectors_topic, until=10_000, timeout_s=3)
    assert records
    for record in records:
        entries = decode_vectors(record.value)
        assert [e.item_id.encode() for e in entries] == [record.key]


def test_a_state_topic_that_is_not_compacted_is_refused_in_one_line(
    dev_stack: Any, tmp_path: Path
) -> None:
    settings = unique_settings(dev_stack, tmp_path)
    # As a worker before issue 14 created it, or an operator by hand: no configs.
    ensure_topics(settings.bootstrap_servers, [settings.changelog_topic], settings.partitions)
    with pytest.raises(ServiceError) as refused:
        RunningWorker(settings, tmp_path / "worker.log")
    message = str(refused.value)
    assert settings.changelog_topic in message and "cleanup.policy=compact" in message
    lines = [
        line
        for line in (tmp_path / "worker.log").read_text().splitlines()
        if "cleanup.policy" in line
    ]
    assert len(lines) == 1, lines
    assert "Traceback" not in (tmp_path / "worker.log").read_text()
