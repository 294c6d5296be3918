"""stream/kafka/internals.py reaches the private state it names on the pinned faust,
mode and aiokafka: each accessor answers from a real object, with no broker. A failure
here after a version bump names the accessor to re-read against the new source."""

from __future__ import annotations

import asyncio
import io
from typing import Any

from faust.types import TP

from stream.kafka import internals
from stream.kafka.transport import streamrec_app


def with_app(body: Any) -> None:
    async def main() -> None:
        app = streamrec_app(
            "tinternals",
            fetch_max_wait_ms=10,
            broker="kafka://127.0.0.1:1",
            store="memory://",
            autodiscover=False,
        )
        result = body(app)
        if result is not None:
            await result

    asyncio.run(main())


def test_consumer_offsets_are_the_consumers_live_mappings() -> None:
    def body(app: Any) -> None:
        consumer = app.consumer
        tp = TP("t", 0)
        assert internals.read_offsets(consumer)[tp] is None  # unread: None, no KeyError
        internals.read_offsets(consumer)[tp] = 4
        internals.committed_offsets(consumer)[tp] = 3
        assert internals.read_offsets(consumer) is internals.read_offsets(consumer)
        assert internals.read_offsets(consumer)[tp] == 4
        assert internals.committed_offsets(consumer)[tp] == 3
        assert internals.unacked_messages(consumer) == []
        assert internals.partition_flags(consumer, tp) == {
            "active": False,
            "paused": False,
            "buffered": False,
        }

    with_app(body)


def test_forget_acked_below_keeps_only_later_offsets() -> None:
    def body(app: Any) -> None:
        consumer = app.consumer
        tp = TP("t", 0)
        consumer._acked[tp] = [1, 2, 5, 6]
        consumer._acked_index[tp] = {1, 2, 5, 6}
        internals.forget_acked_below(consumer, tp, 5)
        internals.forget_acked_below(consumer, tp, 5)  # idempotent
        assert consumer._acked[tp] == [5, 6]
        assert consumer._acked_index[tp] == {5, 6}

    with_app(body)


def test_channel_queues_yield_each_channel_with_a_queue() -> None:
    def body(app: Any) -> None:
        topic = app.topic("q-topic", value_type=bytes, value_serializer="raw")
        app.topics.add(topic)
        assert list(internals.channel_queues(app)) == []  # no queue built yet
        queue = topic.queue  # built on first use
        assert list(internals.channel_queues(app)) == [(topic, queue)]
        assert internals.pressure_drop_callbacks(queue) == 0
        internals.acking_topics(app).add("q-topic")
        assert app.topics.acks_enabled_for("q-topic")

    with_app(body)


def test_a_consumer_not_started_has_no_aiokafka_state() -> None:
    def body(app: Any) -> None:
        thread = internals.consumer_thread(app.consumer)
        assert internals.aiokafka_consumer(thread) is None
        assert internals.fetch_position(None, TP("t", 0)) is None
        assert internals.fetcher_state(None) == {}

    with_app(body)


def test_sigusr1_runs_on_sigusr1() -> None:
    called: list[str] = []

    class Worker(internals.Sigusr1Worker):
        async def on_sigusr1(self) -> None:
            called.append("dump")

    def body(app: Any) -> Any:
        worker = Worker(
            app, loglevel="warning", quiet=True, stdout=io.StringIO(), stderr=io.StringIO()
        )
        return worker._cry()  # what mode's SIGUSR1 handler schedules

    with_app(body)
    assert called == ["dump"]
