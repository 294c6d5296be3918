"""Applying a batch of accepted clicks, in the order that makes the worker exactly-once.

Every click is applied once, even across crashes and rebalances, because of the order in
which a batch's effects reach Kafka (`BatchApplier.apply`):

1. the clicks are applied in memory (`ClickProcessor.process_batch`), each user's newest
   record held in flight;
2. the item-vector deltas of the batch are sent to the items' owners, and the
   recommendations to their topic, and the batch waits until the broker has all of
   them;
3. only then are the users' records written to the table (its changelog), after
   those of every batch applied before it (by either agent);
4. the batch's offsets are acknowledged once its records are durable, in the order
   the batches were taken (stream/worker/acks.py).

Steps 2 to 4 are the batch's finishing task (`BatchApplier.begin`): the agent applies
its next batch meanwhile (`STREAMREC_PIPELINE_BATCHES`), so the model's work overlaps
the broker's round trips.

A replay after a crash then meets each click in one of two states. Its user record
reached the changelog: its deltas and its recommendation are in Kafka too, and the
record's dedup window skips the click by event id. Its record did not: the click is
applied again, its recommendation may repeat (at least once), and the item owners skip
its deltas by source offset (stream/items/). Faust flushes everything sent before it
commits an offset, so a committed click is never replayed at all. A user's record is
written by every batch that applied one of its clicks, in order, even when a later
batch already holds a newer one: a batch acknowledged after its finishing task never
leaves a click that only a not-yet-durable record holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence, Sized
from typing import Any

from stream.metrics import WorkerMetrics, observe_many, observe_values
from stream.worker.pipeline import Accepted, BatchOutcome, ClickProcessor
from stream.worker.users import UserTable
from stream.worker.views import RecentRecommendations

# Queues every pending item-vector delta to its owner; returns what resolves once the
# broker has them (ItemOwner.send_deltas).
SendDeltas = Callable[[], list[Awaitable[Any]]]
# Sends a batch's recommendations ((user key, JSON value) pairs, in order); the coroutine
# returns what resolves once the broker has them (KeyedBatchSender.send).
SendRecommendations = Callable[[list[tuple[bytes, bytes]]], Awaitable[Sequence[Awaitable[Any]]]]


class BatchApplier:
    """Applies batches of accepted clicks for both click agents of a worker.

    `send_deltas` and `send_recommendations` are the two sinks (lists in tests);
    `index` is only measured (its item count). Not thread-safe: both agents run on the
    worker's event loop, and a user's records stay consistent across them through
    `users.in_flight`.
    """

    def __init__(
        self,
        processor: ClickProcessor,
        users: UserTable,
        *,
        send_deltas: SendDeltas,
        send_recommendations: SendRecommendations,
        metrics: WorkerMetrics,
        index: Sized,
        recent: RecentRecommendations,
    ) -> None:
        self.processor = processor
        self.users = users
        self.send_deltas = send_deltas
        self.send_recommendations = send_recommendations
        self.metrics = metrics
        self.index = index
        self.recent = recent
        # Resolves once the last batch applied has written its records (or failed to).
        self._written: asyncio.Future[bool] | None = None

    async def apply(self, batch: list[Accepted]) -> None:
        """`begin` the batch and wait until it is finished: its records are written."""
        await (await self.begin(batch))

    async def begin(self, batch: list[Accepted]) -> asyncio.Future[None]:
        """Apply `batch` in order and queue its deltas and recommendations; returns the
        batch's finishing task, which makes them durable, then writes its users'
        records (the module docstring says why this order) and resolves. A send that
        fails makes it raise before any of the batch's records is written. Clicks
        already applied (by event id) emit nothing.

        Records are written in the order batches were applied, across both agents: a
        batch's finishing writes only after the previous one's has written. So every
        record of a batch is written, even one a later batch replaced in flight (the
        later record follows it), and a batch acknowledged after its finishing never
        leaves a click that is only in a record not yet durable."""
        outcome = self.processor.process_batch(batch, self.users.current_record)
        if not outcome.applied:
            nothing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            nothing.set_result(None)
            return nothing
        for user_key, record in outcome.records.items():
            self.users.hold(user_key, record)
        # This batch's place in the write order: taken before any await, so it is the
        # order in which the batches were applied.
        previous, written = self._written, asyncio.get_running_loop().create_future()
        self._written = written
        started = time.perf_counter()
        try:
            pending = self.send_deltas()
            pending += await self.send_recommendations(
                [
                    (accepted.user_key, value)
                    for accepted, value in zip(outcome.applied, outcome.values, strict=True)
                ]
            )
        except BaseException:
            written.set_result(False)  # later batches fail rather than wait for it
            raise
        return asyncio.ensure_future(self._finish(outcome, pending, previous, written, started))

    async def _finish(
        self,
        outcome: BatchOutcome,
        pending: list[Awaitable[Any]],
        previous: asyncio.Future[bool] | None,
        written: asyncio.Future[bool],
        started: float,
    ) -> None:
        """Wait for the batch's sends, then for the previous batch's records, then
        write this batch's; `written` resolves to whether they were written."""
        try:
            await asyncio.gather(*pending)
            if previous is not None and not await previous:
                raise RuntimeError("an earlier batch's user records were not written")
            await self.users.write_batch(outcome.records)
        except BaseException:
            written.set_result(False)
            raise
        written.set_result(True)
        self._measure(outcome, time.perf_counter() - started)
        await self.users.evict_users()

    def _measure(self, outcome: BatchOutcome, seconds: float) -> None:
        """The batch's metrics, once per batch: per-event produce time, recommendations
        emitted, click-to-recommendation latency of each click, the index size."""
        metrics = self.metrics
        n = len(outcome.applied)
        observe_many(metrics.stage_seconds.labels(stage="produce"), seconds / n, n)
        metrics.batch_clicks.observe(n)
        metrics.recommendations_emitted.inc(n)
        self.recent.add_encoded(outcome.values)
        now = time.time()
        latencies = [
            max(0.0, now - a.clicked_at) for a in outcome.applied if a.clicked_at is not None
        ]
        observe_values(metrics.click_to_recommendation, latencies)
        if outcome.variants and latencies:
            self._measure_variants(outcome, now)
        metrics.index_items.set(len(self.index))

    def _measure_variants(self, outcome: BatchOutcome, now: float) -> None:
        """Click-to-recommendation latency by the variant that served each click."""
        by_variant: dict[str, list[float]] = {}
        for accepted, variant in zip(outcome.applied, outcome.variants, strict=True):
            if accepted.clicked_at is not None:
                by_variant.setdefault(variant, []).append(max(0.0, now - accepted.clicked_at))
        for variant, latencies in by_variant.items():
            observe_values(self.metrics.variant_latency.labels(variant=variant), latencies)


__all__ = ["BatchApplier", "SendDeltas", "SendRecommendations"]
