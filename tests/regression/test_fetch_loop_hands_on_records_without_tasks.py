"""faust's fetch loop hands each record to the conductor through mode's `wait_first`,
which made four tasks per record; StreamrecConsumer.wait_first (stream/kafka/transport.py,
P4) runs a callback that does not wait with none, and one that waits as mode would."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.regression._consumer import run_with_consumer

TOPIC = "clicks-wait-first"


def counting_tasks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every task asyncio.ensure_future makes from now on (mode's wait_first uses it)."""
    made: list[Any] = []
    original = asyncio.ensure_future

    def ensure_future(awaitable: Any, **kwargs: Any) -> Any:
        made.append(awaitable)
        return original(awaitable, **kwargs)

    monkeypatch.setattr(asyncio, "ensure_future", ensure_future)
    return made


def test_a_callback_that_does_not_wait_makes_no_task(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(consumer: Any) -> None:
        delivered: list[str] = []

        async def on_message(message: str) -> str:
            delivered.append(message)
            return f"done {message}"

        consumer.callback = on_message
        made = counting_tasks(monkeypatch)
        results = await consumer.wait_first(consumer.callback("m1"), consumer.suspend_flow.wait())
        assert delivered == ["m1"]
        assert results.results == ["done m1"]
        assert len(results.done) == 1 and not results.stopped
        assert made == []  # mode's wait_first: 4

    run_with_consumer(TOPIC, body)


def test_a_callback_that_waits_goes_on_from_where_it_stopped() -> None:
    async def body(consumer: Any) -> None:
        room = asyncio.Event()
        steps: list[str] = []

        async def on_message(message: str) -> str:
            steps.append("before")
            await asyncio.sleep(0)  # a bare yield
            await room.wait()  # a future
            steps.append("after")
            return message

        consumer.callback = on_message
        asyncio.get_running_loop().call_later(0.05, room.set)
        results = await consumer.wait_first(consumer.callback("m2"), consumer.suspend_flow.wait())
        assert results.results == ["m2"]
        assert steps == ["before", "after"]  # each step ran once

    run_with_consumer(TOPIC, body)


def test_a_suspended_flow_still_interrupts_a_waiting_callback() -> None:
    async def body(consumer: Any) -> None:
        outcome: list[str] = []

        async def on_message(message: str) -> None:
            try:
                await asyncio.Event().wait()  # a queue that never drains
                outcome.append("delivered")
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        consumer.callback = on_message
        asyncio.get_running_loop().call_later(0.05, consumer.suspend_flow.set)
        results = await consumer.wait_first(consumer.callback("m3"), consumer.suspend_flow.wait())
        await asyncio.sleep(0)  # mode cancels the loser on its way out
        assert results.results == [True]  # the suspension won
        assert outcome == ["cancelled"]

    run_with_consumer(TOPIC, body)


def test_an_error_after_a_wait_reaches_the_fetch_loop() -> None:
    async def body(consumer: Any) -> None:
        async def on_message(message: str) -> None:
            await asyncio.sleep(0.01)
            raise ValueError(message)

        consumer.callback = on_message
        with pytest.raises(ValueError, match="m4"):
            await consumer.wait_first(consumer.callback("m4"), consumer.suspend_flow.wait())

    run_with_consumer(TOPIC, body)
