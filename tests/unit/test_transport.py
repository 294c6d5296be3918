"""stream/kafka/transport.py's commit rule, driven through the worker's real Faust consumer
class with no broker: a commit never passes a record that is still being processed
(faust-streaming issue 606, open: with agent concurrency > 1 stock Faust commits past a
slow record at the head of a partition, and a crash then loses it)."""

from __future__ import annotations

import asyncio
from typing import Any

from faust.types import TP
from faust.types.tuples import Message

from stream.kafka.transport import streamrec_app

TOPIC = "clicks-606"
TP0 = TP(TOPIC, 0)


def run(body: Any) -> None:
    async def main() -> None:
        app = streamrec_app("t606", fetch_max_wait_ms=10, broker="kafka://127.0.0.1:1",
                            store="memory://", autodiscover=False)
        app.topic(TOPIC, value_type=bytes, value_serializer="raw", partitions=1)
        app.topics._acking_topics.add(TOPIC)  # what subscribing an agent's topic does
        body(app.consumer)

    asyncio.run(main())


def delivered(consumer: Any, offsets: range) -> list[Message]:
    messages = [Message(TOPIC, 0, o, 0.0, 0, None, b"u1", b"{}", None) for o in offsets]
    for message in messages:
        consumer.track_message(message)  # handed to a stream, pending its ack
    return messages


def test_a_slow_first_record_is_not_committed_past_before_any_commit() -> None:
    def body(consumer: Any) -> None:
        messages = delivered(consumer, range(51))
        for message in messages[1:]:  # another agent instance finishes 1..50 first
            assert consumer.ack(message)
        assert consumer._new_offset(TP0) is None  # stock Faust (and this code before): 51
        consumer.ack(messages[0])  # the slow record is done
        assert consumer._new_offset(TP0) == 51

    run(body)


def test_a_slow_record_after_the_committed_offset_holds_the_commit_at_it() -> None:
    def body(consumer: Any) -> None:
        consumer._committed_offset[TP0] = 10  # the next record to process is 10
        messages = delivered(consumer, range(10, 31))
        for message in messages[:5]:
            consumer.ack(message)  # 10..14 done
        for message in messages[6:]:
            consumer.ack(message)  # 16..30 done, 15 still in flight
        assert consumer._new_offset(TP0) == 15
        consumer._committed_offset[TP0] = 15
        assert consumer._new_offset(TP0) is None
        consumer.ack(messages[5])
        assert consumer._new_offset(TP0) == 31

    run(body)


def test_recovery_seeks_without_a_start_offset_read_from_the_start() -> None:
    # A rebalance during recovery adds standby partitions with no start offset (None);
    # aiokafka's seek raised ValueError on it and the worker crashed (make chaos).
    asked: list[dict[TP, int]] = []

    class Thread:
        async def seek_wait(self, partitions: dict[TP, int]) -> None:
            asked.append(dict(partitions))

    async def main() -> None:
        app = streamrec_app("tseek", fetch_max_wait_ms=10, broker="kafka://127.0.0.1:1",
                            store="memory://", autodiscover=False)
        app.consumer._thread = Thread()
        await app.consumer.seek_wait({TP0: None, TP(TOPIC, 1): 7, TP(TOPIC, 2): -2})

    asyncio.run(main())
    assert asked == [{TP0: 0, TP(TOPIC, 1): 7, TP(TOPIC, 2): 0}]
