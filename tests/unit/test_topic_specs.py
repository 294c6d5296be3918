"""The topic configs the worker asks for, by role, and the start check (issue 14):
contract tests, since no broker here compacts (docs/embedded-broker.md)."""

from __future__ import annotations

import pytest

from stream.kafka.topics import (
    TopicNotCompacted,
    TopicSpec,
    check_compacted,
    record_limit_bytes,
    worker_topics,
)
from stream.settings import Settings


def test_every_worker_topic_has_its_roles_configs() -> None:
    settings = Settings.from_env({}, app_id="app", max_event_bytes=2_000_000)
    specs = {spec.name: spec for spec in worker_topics(settings)}
    assert list(specs) == settings.topics()
    state = {"app-user_contexts-changelog", "app-item-vectors", "app-admin", "items"}
    assert {
        settings.changelog_topic,
        settings.item_vectors_topic,
        settings.admin_topic,
        settings.items_topic,  # the catalogue: each item's latest record (issue 15)
    } == state
    assert not specs[settings.items_dlq_topic].compacted
    for name, spec in specs.items():
        assert spec.configs["max.message.bytes"] == str(2_000_000 + 65_536)
        assert spec.compacted == (name in state), name
        if name not in state:
            assert spec.configs["cleanup.policy"] == "delete"
            assert int(spec.configs["retention.ms"]) > 0


def test_the_record_limit_follows_the_event_limit() -> None:
    assert record_limit_bytes(65_536) == 1_000_000  # Faust's default request size
    assert record_limit_bytes(4_000_000) == 4_065_536


@pytest.mark.parametrize("policy", ["compact", "compact,delete", "delete,compact"])
def test_a_compacted_state_topic_passes(policy: str) -> None:
    check_compacted(
        {"s": {"cleanup.policy": policy}}, [TopicSpec("s", {"cleanup.policy": "compact"})]
    )


@pytest.mark.parametrize("reported", [{"cleanup.policy": "delete"}, {}])
def test_a_state_topic_not_compacted_is_refused(reported: dict[str, str]) -> None:
    specs = [TopicSpec("plain"), TopicSpec("s", {"cleanup.policy": "compact"})]
    with pytest.raises(TopicNotCompacted, match="topic s has cleanup.policy=delete") as refused:
        check_compacted({"plain": {}, "s": reported}, specs)
    assert "\n" not in str(refused.value)
    assert "--add-config cleanup.policy=compact" in str(refused.value)
