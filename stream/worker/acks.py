"""Acknowledging an agent's batches in the order taken, each once its effects are durable.

An agent's loop body may hand a batch's finishing work (waiting for the broker's
acknowledgements, writing the user records) to a task and go on to the next batch, so
that the model's work on batch N+1 overlaps the broker round trips of batch N
(`STREAMREC_PIPELINE_BATCHES`). The batch's events are then acknowledged, and so become
committable, only when that task has succeeded, and never before an earlier batch's.
faust commits a partition up to the first gap in its acknowledged offsets, but it
checks that run against the last commit only once something was committed
(`Consumer._new_offset`), so acks out of order could commit past a batch still
finishing; in order, "acked" means "this and everything before it is durable".
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Taken:
    """One batch an agent took: its `events`, in order. The loop body calls
    `ack_when(finishing)` to have them acknowledged once `finishing` resolves instead
    of as soon as the body returns."""

    events: list[Any]
    finishing: Awaitable[Any] | None = field(default=None, repr=False)

    def ack_when(self, finishing: Awaitable[Any]) -> None:
        self.finishing = finishing


class InOrderAcks:
    """Acknowledges batches on `stream` in the order `add` gets them, each once its
    finishing work resolved, with at most `depth` batches outstanding (`room`).

    A failed finishing is logged when it fails and raised by the next `room`; its
    events and every later batch's stay unacknowledged, so a restart replays them.
    Call from the stream's event loop."""

    def __init__(self, stream: Any, depth: int) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth}")
        self.stream = stream
        self.depth = depth
        self._outstanding: deque[asyncio.Task[None]] = deque()

    async def add(self, taken: Taken) -> None:
        """Acknowledge `taken`'s events after every earlier batch's, once its finishing
        work (if any) resolves."""
        self._forget_done()
        if taken.finishing is None and not self._outstanding:
            await self._ack(taken.events)
            return
        earlier = self._outstanding[-1] if self._outstanding else None
        task = asyncio.ensure_future(self._ack_after(earlier, taken.finishing, taken.events))
        task.add_done_callback(_log_failure)
        self._outstanding.append(task)

    async def room(self) -> None:
        """Return once fewer than `depth` batches are outstanding; raises the error of
        a batch whose finishing failed."""
        self._forget_done()
        while len(self._outstanding) >= self.depth:
            await self._outstanding.popleft()
        self._forget_done()

    def _forget_done(self) -> None:
        """Drop the finished tasks at the front; raises a failed one's error."""
        while self._outstanding and self._outstanding[0].done():
            self._outstanding.popleft().result()

    async def _ack_after(
        self,
        earlier: asyncio.Task[None] | None,
        finishing: Awaitable[Any] | None,
        events: list[Any],
    ) -> None:
        if finishing is not None:
            await finishing
        if earlier is not None:
            await asyncio.shield(earlier)  # its failure is raised (and logged) once, by it
        await self._ack(events)

    async def _ack(self, events: list[Any]) -> None:
        for event in events:
            await self.stream.ack(event)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "a batch's effects did not become durable; its clicks stay unacknowledged",
            exc_info=task.exception(),
        )


__all__ = ["InOrderAcks", "Taken"]
