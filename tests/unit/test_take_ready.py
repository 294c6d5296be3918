"""`take_ready` (stream/kafka/take.py) over a stand-in for a faust stream: a drainer
task that hands each event to the stream's processors one loop iteration at a time, as
faust's passive drainer does. The real stream is exercised by the integration tests
(every worker batch goes through it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from stream.kafka.take import GATHER_MAX_S, take_ready


class _Channel:
    def __aiter__(self) -> _Channel:
        return self

    async def __anext__(self) -> None:  # the drainer below delivers instead
        raise StopAsyncIteration


class DrippingStream:
    """Events 0, 1, 2, ... arriving one every `every_s` seconds."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.channel = _Channel()
        self.current_event: int | None = None
        self.enable_acks = True
        self.should_stop = False
        self._processors: list[Callable[[Any], Any]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.waits = 0  # calls of wait_for_stopped: how often the taker woke to look

    def add_processor(self, processor: Callable[[Any], Any]) -> None:
        self._processors.append(processor)

    def _enable_passive(self, _channel: Any) -> None:
        self._drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        event = 0
        while not self.should_stop:
            await asyncio.sleep(self.every_s)
            self.current_event = event
            for processor in list(self._processors):
                await processor(event)
            event += 1

    async def wait(self, event: asyncio.Event) -> None:
        await event.wait()

    async def wait_for_stopped(self, event: asyncio.Event, timeout: float | None = None) -> None:
        self.waits += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


def batches_of(stream: DrippingStream, hold_s: list[float], max_: int) -> list[list[int]]:
    """Take len(hold_s) batches, holding batch i for hold_s[i] seconds (applying it)."""

    async def main() -> list[list[int]]:
        taken: list[list[int]] = []
        async for batch in take_ready(stream, max_, within_s=0.002):
            taken.append(batch)
            await asyncio.sleep(hold_s[len(taken) - 1])
            if len(taken) == len(hold_s):
                break
        stream.should_stop = True
        return taken

    return asyncio.run(main())


def test_a_batch_gathers_for_as_long_as_the_previous_one_was_held() -> None:
    stream = DrippingStream(every_s=0.001)
    first, second, third = batches_of(stream, [0.03, 0.0, 0.0], max_=1000)
    # The first batch gathered for 2 ms; the second for the 30 ms the first was held
    # (events arriving meanwhile wait for the batch to be handed back, as in faust).
    assert len(second) > 3 * len(first), (len(first), len(second))
    # Events stay in order, none lost or repeated, across batches.
    events = first + second + third
    assert events == list(range(events[0], events[0] + len(events)))


def test_the_gathering_is_bounded_and_a_full_batch_goes_at_once() -> None:
    stream = DrippingStream(every_s=0.0005)
    held_long = batches_of(stream, [1.0, 0.0], max_=10_000)
    # Held for a second, the next batch still gathers at most GATHER_MAX_S.
    assert len(held_long[1]) < 3 * GATHER_MAX_S / 0.0005
    # With max_ 8, a batch goes as soon as it holds 8 events, never more.
    sizes = [len(b) for b in batches_of(DrippingStream(0.0005), [0.05, 0.0, 0.0], max_=8)]
    assert max(sizes) <= 8 and sizes[1] == 8, sizes


def test_an_idle_taker_sleeps_until_an_event_and_takes_it_at_once() -> None:
    # One event every 50 ms: polling every within_s (2 ms) would wake 25 times per event.
    stream = DrippingStream(every_s=0.05)
    taken = batches_of(stream, [0.0] * 4, max_=1000)
    assert taken == [[0], [1], [2], [3]]
    # Per event: one gathering that times out, one wait that the event ends.
    assert stream.waits <= 2 * len(taken) + 1, stream.waits
