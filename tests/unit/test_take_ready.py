"""`take_ready` (stream/kafka/take.py) over a stand-in for a faust stream: records put in
the channel's queue as faust's conductor puts fetched records, a drainer task that hands
each to the stream's processors one loop iteration at a time as faust's passive drainer
does, and a consumer whose high watermark is what the test says the broker holds. The
real stream is exercised by the integration tests (every worker batch goes through it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any

from stream.kafka.take import take_ready

TP = "clicks-0"


class _Channel:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def __aiter__(self) -> _Channel:
        return self

    async def __anext__(self) -> None:  # the drainer below takes from the queue instead
        raise StopAsyncIteration


class _Consumer:
    def __init__(self) -> None:
        self.highwaters: dict[str, int] = {}

    def highwater(self, tp: str) -> int | None:
        return self.highwaters.get(tp)


class QueuedStream:
    """Records 0, 1, 2, ... of one partition: `deliver(n)` puts the next n in the
    channel's queue (a fetch response), `broker_holds(n)` sets the high watermark."""

    def __init__(self) -> None:
        self.channel = _Channel()
        self.app = SimpleNamespace(consumer=_Consumer())
        self.current_event: Any = None
        self.enable_acks = True
        self.should_stop = False
        self._processors: list[Callable[[Any], Any]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.delivered = 0
        self.waits = 0  # calls of wait_for_stopped: how often the taker slept

    def deliver(self, n: int) -> None:
        for offset in range(self.delivered, self.delivered + n):
            record = SimpleNamespace(message=SimpleNamespace(tp=TP, offset=offset))
            self.channel.queue.put_nowait(record)
        self.delivered += n
        self.broker_holds(self.delivered)

    def broker_holds(self, n: int) -> None:
        self.app.consumer.highwaters[TP] = max(n, self.app.consumer.highwaters.get(TP, 0))

    def add_processor(self, processor: Callable[[Any], Any]) -> None:
        self._processors.append(processor)

    def _enable_passive(self, _channel: Any) -> None:
        self._drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while not self.should_stop:
            await asyncio.sleep(0)
            event = await self.channel.queue.get()
            self.current_event = event
            for processor in list(self._processors):
                await processor(event)

    async def wait(self, event: asyncio.Event) -> None:
        await event.wait()

    async def wait_for_stopped(self, event: asyncio.Event, timeout: float | None = None) -> None:
        self.waits += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


def offsets(batch: list[Any]) -> list[int]:
    return [event.message.offset for event in batch]


def take(
    stream: QueuedStream,
    count: int,
    *,
    max_: int = 1000,
    gather_s: float = 0.05,
    feed: Callable[[QueuedStream], Coroutine[Any, Any, None]] | None = None,
    hold: Callable[[int], Coroutine[Any, Any, None]] | None = None,
) -> list[list[int]]:
    """The first `count` batches, taken while `feed` runs; batch i is held (applied)
    by `hold(i)` before it is handed back."""

    async def main() -> list[list[int]]:
        feeding = asyncio.ensure_future(feed(stream)) if feed else None
        taken: list[list[int]] = []
        async for batch in take_ready(stream, max_, gather_s):
            taken.append(offsets(batch))
            if hold is not None:
                await hold(len(taken) - 1)
            if len(taken) == count:
                break
        stream.should_stop = True
        if feeding is not None:
            feeding.cancel()
        return taken

    return asyncio.run(main())


def in_order(batches: list[list[int]]) -> bool:
    events = [offset for batch in batches for offset in batch]
    return events == list(range(len(events)))


def test_an_idle_taker_sleeps_until_an_event_and_takes_it_at_once() -> None:
    async def one_every_20_ms(stream: QueuedStream) -> None:
        while True:
            await asyncio.sleep(0.02)
            stream.deliver(1)

    stream = QueuedStream()
    taken = take(stream, 4, feed=one_every_20_ms)
    assert taken == [[0], [1], [2], [3]]
    # One sleep per event (until it arrives): no timer wakes the taker.
    assert stream.waits <= len(taken) + 1, stream.waits


def test_what_arrives_while_a_batch_is_held_goes_into_the_next_one_at_once() -> None:
    async def one_every_ms(stream: QueuedStream) -> None:
        while True:
            await asyncio.sleep(0.001)
            stream.deliver(1)

    taken_at: list[float] = []
    handed_back: list[float] = []

    async def hold_first_for_30_ms(i: int) -> None:
        taken_at.append(time.monotonic())
        await asyncio.sleep(0.03 if i == 0 else 0.0)
        handed_back.append(time.monotonic())

    taken = take(QueuedStream(), 2, gather_s=1.0, feed=one_every_ms, hold=hold_first_for_30_ms)
    # What arrived while the first batch was held waited in the channel's queue and
    # went into the second, as soon as the drainer had moved it: no gathering for as
    # long again.
    assert len(taken[1]) >= 10, [len(b) for b in taken]
    assert taken_at[1] - handed_back[0] < 0.015, taken_at[1] - handed_back[0]
    assert in_order(taken)


def test_a_batch_goes_once_everything_fetched_is_in_it() -> None:
    stream = QueuedStream()
    stream.deliver(30)  # one fetch response, the broker holding no more
    started = time.monotonic()
    taken = take(stream, 1, gather_s=1.0)
    assert taken == [list(range(30))]
    assert time.monotonic() - started < 0.5  # it did not wait for gather_s


def test_a_batch_waits_for_records_the_broker_already_holds() -> None:
    async def rest_of_the_backlog_in_20_ms(stream: QueuedStream) -> None:
        await asyncio.sleep(0.02)  # a fetch in flight
        stream.deliver(90)

    stream = QueuedStream()
    stream.deliver(10)
    stream.broker_holds(100)  # the last fetch response's high watermark
    taken = take(stream, 1, gather_s=1.0, feed=rest_of_the_backlog_in_20_ms)
    assert taken == [list(range(100))]


def test_the_gathering_is_bounded_by_gather_s() -> None:
    stream = QueuedStream()
    stream.deliver(10)
    stream.broker_holds(1000)  # but the fetcher never brings them
    started = time.monotonic()
    taken = take(stream, 1, gather_s=0.1)
    elapsed = time.monotonic() - started
    assert taken == [list(range(10))]
    assert 0.09 <= elapsed < 0.6, elapsed


def test_a_full_batch_goes_at_once_and_never_holds_more_than_max() -> None:
    stream = QueuedStream()
    stream.deliver(100)
    stream.broker_holds(1000)
    started = time.monotonic()
    taken = take(stream, 5, max_=8, gather_s=1.0)
    assert [len(b) for b in taken] == [8] * 5
    assert in_order(taken)
    assert time.monotonic() - started < 0.5
