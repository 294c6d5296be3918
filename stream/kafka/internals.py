"""The one place in stream/ that reads or writes private state of faust, mode and aiokafka.

Each accessor names the private attribute it reaches and the versions it was checked
on. The pins (pyproject.toml) keep those versions; when a pin moves, re-read each
accessor against the new source, and run tests/regression/, which exercise every one
of them. An upstream rename then fails here, by name, instead of somewhere in the
worker. Overridden private hooks (`_new_offset`, `_fetch_records`, ...) cannot live
here: they stay on the subclasses in stream/kafka/transport.py, and the corrections
table in stream/kafka/__init__.py lists them.

Checked on faust-streaming 0.15.3, mode-streaming 0.7.1 and aiokafka 0.14.0 (the
"checked on" of each accessor below says which of them it depends on).

Contracts: every reader returns the library's live object (a mapping or set that the
library keeps mutating), not a copy, unless it says otherwise; callers that iterate
across an await or a thread take a `list(...)` first. Nothing here blocks or does I/O.
A reader of a consumer's internals that is handed None (no aiokafka consumer yet)
returns an empty answer rather than raising.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping, MutableSet
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

# -- faust's Consumer (faust/transport/consumer.py) -- checked on faust-streaming 0.15.3


def read_offsets(consumer: Any) -> MutableMapping[TP, int | None]:
    """The last offset the faust `consumer` handed to a stream, per partition
    (`Consumer._read_offset`, a defaultdict: an unread partition maps to None)."""
    offsets: MutableMapping[TP, int | None] = consumer._read_offset
    return offsets


def committed_offsets(consumer: Any) -> MutableMapping[TP, int | None]:
    """The offset last committed per partition (`Consumer._committed_offset`, a
    defaultdict: None until the first commit; faust also keeps offset 0 as None)."""
    offsets: MutableMapping[TP, int | None] = consumer._committed_offset
    return offsets


def unacked_messages(consumer: Any) -> list[Any]:
    """A snapshot of the messages handed to streams and not yet acknowledged
    (`Consumer._unacked_messages`, a WeakSet; a copy, safe to iterate)."""
    return list(consumer._unacked_messages)


def forget_acked_below(consumer: Any, tp: TP, offset: int) -> None:
    """Drop faust's own ack bookkeeping of `tp` below `offset` (`Consumer._acked` and
    `Consumer._acked_index`), once a commit up to `offset` has been decided elsewhere:
    faust's lists include records its streams skipped, which must not count. Idempotent."""
    consumer._acked[tp] = [o for o in consumer._acked[tp] if o >= offset]
    consumer._acked_index[tp] = {o for o in consumer._acked_index[tp] if o >= offset}


def partition_flags(consumer: Any, tp: TP) -> dict[str, bool]:
    """Whether `tp` is active, paused or buffered in faust's fetch bookkeeping
    (`Consumer._active_partitions`, which is None before the first assignment,
    `_paused_partitions`, `_buffered_partitions`)."""
    return {
        "active": tp in (consumer._active_partitions or ()),
        "paused": tp in consumer._paused_partitions,
        "buffered": tp in consumer._buffered_partitions,
    }


def consumer_thread(consumer: Any) -> Any:
    """The thread that owns the faust `consumer`'s aiokafka consumer
    (`ThreadDelegateConsumer._thread`)."""
    return consumer._thread


def set_consumer_thread(consumer: Any, thread: Any) -> None:
    """Replace the faust `consumer`'s thread (`ThreadDelegateConsumer._thread`): a test
    seam, so that seeks can be observed with no broker."""
    consumer._thread = thread


# -- faust's AIOKafkaConsumerThread (faust/transport/drivers/aiokafka.py) --
# checked on faust-streaming 0.15.3


def aiokafka_consumer(thread: Any) -> AIOKafkaConsumer | None:
    """The aiokafka consumer inside a faust consumer thread, or None before it starts
    (`AIOKafkaConsumerThread._consumer`). It belongs to the thread's event loop: read
    it from another thread only for a snapshot, never to act on it."""
    consumer: AIOKafkaConsumer | None = getattr(thread, "_consumer", None)
    return consumer


def new_client_consumer(thread: Any) -> AIOKafkaConsumer:
    """A fresh aiokafka consumer with no group and the app's connection settings
    (`AIOKafkaConsumerThread._create_client_consumer`); not started."""
    consumer: AIOKafkaConsumer = thread._create_client_consumer(thread.transport)
    return consumer


# -- faust's aiokafka Producer (faust/transport/drivers/aiokafka.py) --
# checked on faust-streaming 0.15.3, aiokafka 0.14.0


def aiokafka_producer(app: faust.App) -> AIOKafkaProducer:
    """The started aiokafka producer behind the app's faust producer
    (`Producer._ensure_producer`): the one every faust send goes through, so records
    sent on it keep their order with faust's sends to the same partition."""
    producer: AIOKafkaProducer = cast(Any, app.producer)._ensure_producer()
    return producer


# -- faust's app, channels and mode's queues -- checked on faust-streaming 0.15.3,
# mode-streaming 0.7.1


def acking_topics(app: faust.App) -> MutableSet[str]:
    """The topics whose messages faust tracks for commits (`Conductor._acking_topics`);
    subscribing an agent to a topic adds it. Tests add to it to track messages with
    no agent."""
    topics: MutableSet[str] = app.topics._acking_topics  # type: ignore[attr-defined]
    return topics


def channel_queues(app: faust.App) -> Iterator[tuple[Any, Any]]:
    """(channel, queue) for each channel the conductor knows that has a queue yet
    (`Conductor._topics`, `Channel._queue`; a snapshot of the channels)."""
    for channel in list(app.topics._topics):  # type: ignore[attr-defined]
        queue = getattr(channel, "_queue", None)
        if queue is not None:
            yield channel, queue


def pressure_drop_callbacks(queue: Any) -> int:
    """How many callbacks wait for a mode `FlowControlQueue` to drain below its
    pressure mark (`FlowControlQueue._pending_pressure_drop_callbacks`)."""
    return len(queue._pending_pressure_drop_callbacks)


# -- aiokafka's consumer and fetcher (aiokafka/consumer/) -- checked on aiokafka 0.14.0


def set_initial_fetch_wait(consumer: AIOKafkaConsumer, wait_ms: int) -> None:
    """Set the fetch wait an aiokafka `consumer` gives its Fetcher when it starts
    (`AIOKafkaConsumer._fetch_max_wait_ms`). Call before `start()`: later it has no
    effect (use `set_fetch_wait`)."""
    consumer._fetch_max_wait_ms = wait_ms


def set_fetch_wait(consumer: AIOKafkaConsumer, wait_ms: int) -> None:
    """Set the wait of a started aiokafka `consumer`'s next fetch requests
    (`Fetcher._fetch_max_wait_ms`, read for each request it builds)."""
    consumer._fetcher._fetch_max_wait_ms = wait_ms


def assignment(consumer: AIOKafkaConsumer) -> Any:
    """The aiokafka `consumer`'s current partition assignment, or None when it has
    none (`AIOKafkaConsumer._subscription.subscription.assignment`). Its `tps` is the
    set of assigned partitions; `state_value(tp)` has `position`,
    `has_valid_position` and `paused`."""
    subscription = consumer._subscription.subscription
    return None if subscription is None else subscription.assignment


def fetch_position(consumer: AIOKafkaConsumer | None, tp: TP) -> tuple[Any, Any] | None:
    """(fetch position, paused) of `tp` in the aiokafka `consumer`, or None when it is
    not assigned there or `consumer` is None. Never raises: it is read across threads,
    for diagnostics."""
    if consumer is None:
        return None
    try:
        state = assignment(consumer).state_value(TopicPartition(tp.topic, tp.partition))
        return (state.position, state.paused)
    except Exception:
        return None


def fetcher_state(consumer: AIOKafkaConsumer | None) -> dict[str, Any]:
    """aiokafka's fetcher, for diagnostics: results fetched and not yet handed on (a
    partition with one is not fetched again until it is drained; `Fetcher._records`,
    `PartitionRecords` in `_partition_records`), nodes with a fetch in flight
    (`Fetcher._in_flight`), and whether the fetch loop still runs
    (`Fetcher._fetch_task`). Empty when there is no consumer or fetcher yet."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None:
        return {}
    undrained = {}
    for tp, result in list(fetcher._records.items()):
        records = getattr(result, "_partition_records", None)
        undrained[f"{tp.topic}[{tp.partition}]"] = {
            "kind": type(result).__name__,
            "next_fetch_offset": getattr(records, "next_fetch_offset", None),
        }
    task = getattr(fetcher, "_fetch_task", None)
    return {
        "undrained": undrained,
        "in_flight_nodes": sorted(fetcher._in_flight),
        "fetch_loop": None if task is None else ("done" if task.done() else "running"),
    }


# -- mode's Worker (mode/worker.py) -- checked on mode-streaming 0.7.1


class Sigusr1Worker(faust.Worker):
    """A faust Worker whose SIGUSR1 handler runs `on_sigusr1` instead of mode's dump
    of every task's stack (mode's `Worker._on_sigusr1` schedules `Worker._cry`).

    Subclass it and override `on_sigusr1`; the default keeps mode's behaviour."""

    async def on_sigusr1(self) -> None:
        """Called on the worker's event loop for each SIGUSR1; must not block long."""
        await super()._cry()

    async def _cry(self) -> None:
        await self.on_sigusr1()
