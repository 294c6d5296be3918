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

Events do not wait in the stream's queue for a batch to take them: faust's fetcher
hands them over one event-loop iteration each (a `wait_first` per message), and not at
all while a batch is applied, since applying it holds the loop. A batch can only be as
large as what arrives while it gathers. `take_ready` therefore gathers for as long as
the caller held the previous batch (at least `within_s`, at most `GATHER_MAX_S`), so
the batch size follows the load: an idle worker sleeps until a click arrives (no timer
wakes it) and takes it at once, and one busy for 100 ms per batch gathers for 50 ms. A
batch is handed over early once `max_` events are buffered. Events are not acknowledged
here (as `noack_take`): the caller acks each batch once it is applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from mode.utils.futures import notify

#: The longest a batch gathers events, however long the previous one took to apply.
GATHER_MAX_S = 0.05


async def take_ready(stream: Any, max_: int, within_s: float) -> AsyncIterator[list[Any]]:
    """The events of `stream` in batches of at most `max_`: what arrived while the
    batch gathered (for as long as the caller held the previous batch, clamped to
    [`within_s`, `GATHER_MAX_S`]), or `max_` events as soon as they are buffered. When
    a gathering found nothing, what arrives next is handed over as soon as it is
    there."""
    buffer: list[Any] = []
    ready = asyncio.Event()
    arrived = asyncio.Event()  # set while the buffer holds an event
    consumed = asyncio.Event()
    # Set while the caller holds a batch: the drainer waits rather than add to it.
    consuming: asyncio.Future[None] | None = None
    gather_s = within_s

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming
        if consuming is not None:
            try:
                await consuming
            finally:
                consuming = None
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_ready found no current event")
        buffer.append(event)
        arrived.set()
        if len(buffer) >= max_:
            ready.set()
            # Never more than max_ in a batch: wait until this one is handed over.
            consumed.clear()
            await stream.wait(consumed)
        return value

    acks_were = stream.enable_acks
    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    # faust's own take starts its background drainer the same way.
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(ready, timeout=gather_s)
            if not buffer:
                # Idle: sleep until an event arrives rather than wake every `within_s`
                # to find none (each agent did, 500 times a second at the default:
                # most of an idle worker's CPU), then hand it over at once.
                gather_s = within_s
                await stream.wait_for_stopped(arrived)
                if not buffer:
                    continue
            loop = asyncio.get_running_loop()
            consuming = loop.create_future()
            held_from = loop.time()
            try:
                yield list(buffer)
            finally:
                gather_s = min(GATHER_MAX_S, max(within_s, loop.time() - held_from))
                buffer.clear()
                ready.clear()
                arrived.clear()
                notify(consuming)
                consumed.set()
    finally:
        stream.enable_acks = acks_were
        stream._processors.remove(add_to_buffer)


__all__ = ["take_ready"]
