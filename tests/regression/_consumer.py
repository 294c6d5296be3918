"""The worker's real Faust consumer class, driven with no broker: a helper for the
regression tests of stream/kafka/transport.py's corrections."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from faust.types import TP
from faust.types.tuples import Message

from stream.kafka import internals
from stream.kafka.transport import StreamrecConsumer, streamrec_app


def run_with_consumer(
    topic: str, body: Callable[[StreamrecConsumer], Awaitable[None] | None]
) -> None:
    """Run `body` with the consumer of a fresh app whose `topic` (1 partition) is
    tracked for commits, as subscribing an agent to it would, inside an event loop."""

    async def main() -> None:
        app = streamrec_app(
            "tregression",
            fetch_max_wait_ms=10,
            broker="kafka://127.0.0.1:1",
            store="memory://",
            autodiscover=False,
        )
        app.topic(topic, value_type=bytes, value_serializer="raw", partitions=1)
        internals.acking_topics(app).add(topic)
        consumer = app.consumer
        assert isinstance(consumer, StreamrecConsumer)
        outcome = body(consumer)
        if outcome is not None:
            await outcome

    asyncio.run(main())


def delivered(consumer: Any, tp: TP, offsets: range) -> list[Message]:
    """Messages at `offsets` of `tp`, each handed to a stream and pending its ack."""
    messages = [
        Message(tp.topic, tp.partition, o, 0.0, 0, None, b"u1", b"{}", None) for o in offsets
    ]
    for message in messages:
        consumer.track_message(message)
    return messages


class RecordingThread:
    """Stands in for the consumer's thread: records the seeks asked of it."""

    def __init__(self) -> None:
        self.seeks: list[tuple[TP, int]] = []
        self.seek_waits: list[dict[TP, int]] = []

    def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.seek_waits.append(dict(partitions))
