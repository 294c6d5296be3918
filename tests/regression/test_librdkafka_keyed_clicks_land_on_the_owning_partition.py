"""librdkafka (kcat, confluent-kafka) against the embedded broker, as the README's kcat
notes say: librdkafka 2.16 talks to it (Debian's kcat, librdkafka 2.0.2, fails with
`ApiVersionRequest failed ... Read underflow`), and only with
`partitioner=murmur2_random` do keyed clicks land on the partition that owns the user;
librdkafka's default (consistent_random, CRC32) sends most elsewhere, one extra hop each
(docs/embedded-broker.md, issue 14)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from stream.kafka.topics import ensure_topics
from stream.worker.users import owning_partition

confluent_kafka = pytest.importorskip("confluent_kafka")
pytestmark = pytest.mark.integration

PARTITIONS = 4
KEYS = [f"u{n}".encode() for n in range(40)]


def partitions_chosen(bootstrap_servers: str, topic: str, **config: str) -> dict[bytes, int]:
    """Each key's partition as librdkafka chose it (from the delivery reports)."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap_servers, **config})
    chosen: dict[bytes, int] = {}

    def delivered(error: Any, message: Any) -> None:
        assert error is None, error
        chosen[message.key()] = message.partition()

    for key in KEYS:
        producer.produce(
            topic, key=key, value=b'{"user_id":"x","item_id":"i1"}', on_delivery=delivered
        )
    assert producer.flush(30) == 0, "librdkafka could not deliver to the embedded broker"
    return chosen


def test_murmur2_random_puts_keyed_clicks_where_the_worker_owns_them(dev_stack: Any) -> None:
    assert confluent_kafka.libversion()[0] >= "2.16"
    topic = f"kcat-{uuid.uuid4().hex[:8]}"
    ensure_topics(dev_stack.bootstrap_servers, [topic], PARTITIONS)
    owner = {key: owning_partition(key, PARTITIONS) for key in KEYS}

    murmur2 = partitions_chosen(dev_stack.bootstrap_servers, topic, partitioner="murmur2_random")
    assert murmur2 == owner
    default = partitions_chosen(dev_stack.bootstrap_servers, topic)
    assert len(default) == len(KEYS)
    assert default != owner, "librdkafka's default partitioner now agrees: update the README"
