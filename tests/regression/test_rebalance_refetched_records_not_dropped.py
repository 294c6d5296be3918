"""After a rebalance's seek, each partition's records still reach the agents in order,
none skipped (stream/kafka/transport.py, correction 4). Faust drops a record below the
read offset, and records fetched before the seek raise that offset again, so the
re-fetched ones were dropped and stayed unprocessed until the next restart (18 of 3,000
clicks after two SIGKILLs). Here the consumer refuses what is past the expected offset
and seeks the partition back to it. The end-to-end check is
tests/integration/test_faults.py."""

from __future__ import annotations

from typing import Any

from faust.types import TP

from stream.kafka import internals
from tests.regression._consumer import RecordingThread, delivered, run_with_consumer

TOPIC = "clicks-refetch"
TP0 = TP(TOPIC, 0)


def test_records_past_a_gap_are_refused_and_the_partition_sought_back() -> None:
    thread = RecordingThread()
    admitted: list[int] = []

    async def body(consumer: Any) -> None:
        internals.set_consumer_thread(consumer, thread)
        # What perform_seek leaves after a rebalance: streams start again at offset 3.
        consumer.record_order.reset({TP0: 3})
        fetched_before_seek = delivered(consumer, TP0, range(5, 8))
        refetched = delivered(consumer, TP0, range(3, 8))
        for message in fetched_before_seek + refetched:
            if await consumer.admit(message):
                admitted.append(message.offset)

    run_with_consumer(TOPIC, body)
    assert thread.seeks == [(TP0, 3)]  # once: 6 and 7 wait for the seek to land
    assert admitted == [3, 4, 5, 6, 7]  # each once, in order, 5-7 after 3 and 4
