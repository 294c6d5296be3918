"""Applying a batch of accepted clicks, in the order that makes the worker exactly-once.

Every click is applied once, even across crashes and rebalances, because of the order in
which a batch's effects reach Kafka (`BatchApplier.apply`):

1. the clicks are applied in memory (`ClickProcessor.process_batch`), each user's newest
   record held in flight;
2. the item-vector deltas of the batch are sent to the items' owners, and the
   recommendations to their topic, and the batch waits until the broker has all of
   them;
3. only then are the users' records written to the table (its changelog).

A replay after a crash then meets each click in one of two states. Its user record
reached the changelog: its deltas and its recommendation are in Kafka too, and the
record's dedup window skips the click by event id. Its record did not: the click is
applied again, its recommendation may repeat (at least once), and the item owners skip
its deltas by source offset (stream/items/). Faust flushes everything sent before it
commits an offset, so a committed click is never replayed at all.
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

    async def apply(self, batch: list[Accepted]) -> None:
        """Apply `batch` in order, make its deltas and recommendations durable, then
        write its users' records (the module docstring says why this order). Blocks
        until the broker has acknowledged every send; a send that fails raises here,
        before any record is written. Clicks already applied (by event id) emit
        nothing."""
        outcome = self.processor.process_batch(batch, self.users.current_record)
        if not outcome.applied:
            return
        for user_key, record in outcome.records.items():
            self.users.hold(user_key, record)
        started = time.perf_counter()
        pending = self.send_deltas()
        pending += await self.send_recommendations(
            [
                (accepted.user_key, value)
                for accepted, value in zip(outcome.applied, outcome.values, strict=True)
            ]
        )
        await asyncio.gather(*pending)
        # Only the newest record of a user is written: if the other agent applied a
        # later click meanwhile, its record includes this one's and it writes.
        await self.users.write_newest(outcome.records)
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
