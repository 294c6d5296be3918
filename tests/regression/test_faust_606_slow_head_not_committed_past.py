"""A commit never passes a record that is still being processed (stream/kafka/transport.py,
correction 2). faust-streaming issue 606 (open): with agent concurrency > 1 stock Faust
commits past a slow record at the head of a partition, and a crash then loses it."""

from __future__ import annotations

from typing import Any

from faust.types import TP

from stream.kafka import internals
from tests.regression._consumer import delivered, run_with_consumer

TOPIC = "clicks-606"
TP0 = TP(TOPIC, 0)


def test_a_slow_first_record_is_not_committed_past_before_any_commit() -> None:
    def body(consumer: Any) -> None:
        messages = delivered(consumer, TP0, range(51))
        for message in messages[1:]:  # another agent instance finishes 1..50 first
            assert consumer.ack(message)
        assert consumer._new_offset(TP0) is None  # stock Faust (and this code before): 51
        consumer.ack(messages[0])  # the slow record is done
        assert consumer._new_offset(TP0) == 51

    run_with_consumer(TOPIC, body)


def test_a_slow_record_after_the_committed_offset_holds_the_commit_at_it() -> None:
    def body(consumer: Any) -> None:
        committed = internals.committed_offsets(consumer)
        committed[TP0] = 10  # the next record to process is 10
        messages = delivered(consumer, TP0, range(10, 31))
        for message in messages[:5]:
            consumer.ack(message)  # 10..14 done
        for message in messages[6:]:
            consumer.ack(message)  # 16..30 done, 15 still in flight
        assert consumer._new_offset(TP0) == 15
        committed[TP0] = 15
        assert consumer._new_offset(TP0) is None
        consumer.ack(messages[5])
        assert consumer._new_offset(TP0) == 31

    run_with_consumer(TOPIC, body)
