"""A recovery seek with no start offset reads from the start instead of crashing the
worker (stream/kafka/transport.py, correction 6): a rebalance during table recovery adds
standby partitions with no start offset (None), and aiokafka's seek raised ValueError
on it (`make chaos`, about once in 10 kills)."""

from __future__ import annotations

from typing import Any

from faust.types import TP

from stream.kafka import internals
from tests.regression._consumer import RecordingThread, run_with_consumer

TOPIC = "changelog-seek"


def test_recovery_seeks_without_a_start_offset_read_from_the_start() -> None:
    thread = RecordingThread()

    async def body(consumer: Any) -> None:
        internals.set_consumer_thread(consumer, thread)
        await consumer.seek_wait({TP(TOPIC, 0): None, TP(TOPIC, 1): 7, TP(TOPIC, 2): -2})

    run_with_consumer(TOPIC, body)
    assert thread.seek_waits == [{TP(TOPIC, 0): 0, TP(TOPIC, 1): 7, TP(TOPIC, 2): 0}]
