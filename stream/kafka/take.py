"""Batches that hold what is ready, not what arrived within a fixed wait (W7 in
stream/kafka/__init__.py).

faust's `Stream.noack_take(max_, within)` fills its buffer from a background drainer
that moves one event per event-loop iteration (`await sleep(0)` per event), and stops
filling while the batch it handed over is processed. After each batch it waits the
whole `within` and hands over what the drainer moved meanwhile: on a busy worker a
dozen events in 2 ms, however many thousands wait in the stream's queue. So batches
stayed small exactly when batching would save the most (measured: 10 clicks per batch
with a backlog of thousands, which made the model's batch step no faster than one
click at a time).

`take_ready` hands over what is ready, as natural batching does. While the caller holds
a batch the drainer waits, as in faust's own take: what arrives meanwhile stays in the
channel's queue, not yet taken by the stream (so a rebalance meanwhile finds the stream
as faust's take would leave it). Once the batch is handed back, the next one goes as
soon as nothing more is ready: the channel queue is empty (the drainer has moved
everything the fetcher delivered) and, on every partition it took from, the buffer holds
the newest record of the consumer's last fetch response (its high watermark; more there
means a backlog the fetcher is still bringing). It goes earlier at `max_` events, or
`gather_s` after it began gathering; meanwhile it looks every `POLL_S`. An idle taker
(nothing buffered) sleeps until an event arrives, no timer wakes it. So the batch size
follows the load (what arrived while one batch was applied goes into the next) and no
click waits for a timer. Events are not acknowledged here (as `noack_take`): the caller
acks each batch once it is applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

#: How often a gathering batch looks whether anything more is on its way.
POLL_S = 0.001


async def take_ready(stream: Any, max_: int, gather_s: float) -> AsyncIterator[list[Any]]:
    """The events of `stream`, in order, in batches of at most `max_`: what is ready
    (the module docstring says when a batch goes; `gather_s` bounds how long a batch
    waits for events already queued)."""
    buffer: list[Any] = []
    arrived = asyncio.Event()  # set when an event is added
    full = asyncio.Event()  # set when the buffer holds max_ events
    held = asyncio.Event()  # set while the caller holds a batch
    released = asyncio.Event()  # set while it does not
    released.set()
    queued = _channel_queue(stream)
    fetched = _Fetched(stream.app.consumer)

    async def add_to_buffer(value: Any) -> Any:
        # The drainer waits here while the caller holds a batch (or the stream stops).
        if held.is_set():
            await stream.wait(released)
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_ready found no current event")
        buffer.append(event)
        fetched.took(event.message)
        arrived.set()
        if len(buffer) >= max_:
            full.set()
        return value

    acks_were = stream.enable_acks
    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    # faust's own take starts its background drainer the same way.
    stream._enable_passive(aiter(stream.channel))
    loop = asyncio.get_running_loop()
    try:
        while not stream.should_stop:
            if not buffer:
                # Idle: sleep until an event arrives rather than wake on a timer to
                # find none (each agent did, 500 times a second: most of an idle
                # worker's CPU).
                arrived.clear()
                await stream.wait_for_stopped(arrived)
                if not buffer:
                    continue
            # Look every POLL_S rather than wake per event: the fetcher and the drainer
            # each move one record per loop iteration, so the queue empties and fills
            # again between most of them under a backlog.
            deadline = loop.time() + gather_s
            while (
                len(buffer) < max_
                and loop.time() < deadline
                and (not queued.empty() or fetched.behind())
            ):
                full.clear()
                await stream.wait_for_stopped(
                    full, timeout=min(POLL_S, max(0.0, deadline - loop.time()))
                )
            batch = buffer[:max_]
            held.set()
            released.clear()
            try:
                yield batch
            finally:
                del buffer[: len(batch)]
                held.clear()
                released.set()
    finally:
        stream.enable_acks = acks_were
        stream._processors.remove(add_to_buffer)


def _channel_queue(stream: Any) -> Any:
    """The queue the stream's drainer takes events from: faust's `Stream._py_aiter`
    reads the channel's `queue` directly (its `empty()` and `get_nowait()`), and the
    consumer's conductor puts each fetched record there."""
    return stream.channel.queue


class _Fetched:
    """Per partition, the offset after the newest event the buffer took, against the
    high watermark of the consumer's last fetch response (aiokafka's `highwater`, which
    faust's consumer passes on): whether the broker already holds events of this stream
    that the fetcher has not delivered yet (a backlog, or a fetch in flight)."""

    def __init__(self, consumer: Any) -> None:
        self._highwater = consumer.highwater
        self._next: dict[Any, int] = {}

    def took(self, message: Any) -> None:
        self._next[message.tp] = message.offset + 1

    def behind(self) -> bool:
        for tp, next_offset in list(self._next.items()):
            try:
                highwater = self._highwater(tp)
            except AssertionError:  # aiokafka's: no longer assigned (a rebalance)
                del self._next[tp]
                continue
            if highwater is not None and highwater > next_offset:
                return True
        return False


__all__ = ["take_ready"]
