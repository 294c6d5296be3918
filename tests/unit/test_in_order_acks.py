"""InOrderAcks (stream/worker/acks.py): an agent's batches are acknowledged in the order
taken, each only once its finishing work succeeded, with at most `depth` outstanding.
The stream is a stand-in that records acks; the worker's agents over the real broker
are covered by tests/integration (test_replay, test_faults, test_rebalance)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream.worker.acks import InOrderAcks, Taken


class AckLog:
    def __init__(self) -> None:
        self.acked: list[Any] = []

    async def ack(self, event: Any) -> bool:
        self.acked.append(event)
        return True


def unfinished() -> asyncio.Future[None]:
    """A batch's finishing work, resolved by the test."""
    return asyncio.get_running_loop().create_future()


def test_a_batch_without_finishing_work_is_acked_at_once() -> None:
    stream = AckLog()

    async def main() -> None:
        acks = InOrderAcks(stream, depth=2)
        await acks.add(Taken([1, 2]))
        assert stream.acked == [1, 2]  # no task: acked before `add` returned

    asyncio.run(main())


def test_batches_are_acked_in_order_whichever_finishes_first() -> None:
    stream = AckLog()

    async def main() -> None:
        acks = InOrderAcks(stream, depth=3)
        first_done, second_done = unfinished(), unfinished()
        first, second, third = Taken([1]), Taken([2]), Taken([3])
        first.ack_when(first_done)
        second.ack_when(second_done)
        for taken in (first, second, third):
            await acks.add(taken)
        second_done.set_result(None)
        await asyncio.sleep(0.01)
        assert stream.acked == []  # the first is not finished: nothing after it is acked
        first_done.set_result(None)
        await asyncio.sleep(0.01)
        assert stream.acked == [1, 2, 3]

    asyncio.run(main())


def test_room_waits_until_fewer_than_depth_are_outstanding() -> None:
    stream = AckLog()

    async def main() -> None:
        acks = InOrderAcks(stream, depth=2)
        done = unfinished()
        first, second = Taken([1]), Taken([2])
        first.ack_when(done)
        second.ack_when(asyncio.sleep(0))
        await acks.add(first)
        await acks.room()  # one outstanding: room for the next
        await acks.add(second)
        waiting = asyncio.ensure_future(acks.room())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        done.set_result(None)
        await waiting
        assert stream.acked[0] == 1

    asyncio.run(main())


def test_a_failed_batch_is_never_acked_nor_any_after_it_and_its_error_is_raised() -> None:
    stream = AckLog()

    async def refused() -> None:
        raise ConnectionError("broker unreachable")

    async def main() -> None:
        acks = InOrderAcks(stream, depth=3)
        failed, after = Taken([1]), Taken([2])
        failed.ack_when(refused())
        await acks.add(failed)
        await acks.add(after)
        await asyncio.sleep(0.01)
        with pytest.raises(ConnectionError):
            await acks.room()
        assert stream.acked == []

    asyncio.run(main())


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        InOrderAcks(AckLog(), depth=0)
