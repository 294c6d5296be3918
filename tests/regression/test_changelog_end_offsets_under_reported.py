"""Table recovery reads the changelog to its true end (stream/kafka/transport.py,
correction 3): the embedded broker reports a partition's end offset as the base of its
last record batch plus one (docs/embedded-broker.md), and `true_end_offsets` corrects
that by reading the last batch."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP
from kafka import KafkaProducer

from stream.kafka.topics import ensure_topics
from stream.kafka.transport import true_end_offsets

pytestmark = pytest.mark.integration


def test_end_offsets_include_every_record_of_the_last_batch(dev_stack: Any) -> None:
    topic = f"ends-{uuid.uuid4().hex[:8]}"
    ensure_topics(dev_stack.bootstrap_servers, [topic], 2)
    producer = KafkaProducer(bootstrap_servers=dev_stack.bootstrap_servers, linger_ms=200)
    for i in range(50):  # one batch on partition 0; partition 1 stays empty
        producer.send(topic, value=b"x%d" % i, partition=0)
    producer.flush()
    producer.close()

    async def ends() -> tuple[dict[TP, int | None], dict[TP, int | None]]:
        reporter = AIOKafkaConsumer(bootstrap_servers=dev_stack.bootstrap_servers)
        await reporter.start()
        try:
            raw = await reporter.end_offsets([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        finally:
            await reporter.stop()
        reported: dict[TP, int | None] = {
            TP(tp.topic, tp.partition): end for tp, end in raw.items()
        }

        def probe() -> AIOKafkaConsumer:
            return AIOKafkaConsumer(bootstrap_servers=dev_stack.bootstrap_servers)

        return reported, await true_end_offsets(probe, reported)

    reported, corrected = asyncio.run(ends())
    print(f"broker reported {reported}, corrected {corrected}")
    assert corrected == {TP(topic, 0): 50, TP(topic, 1): 0}
