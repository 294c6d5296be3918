"""Prometheus metrics of one worker, in their own registry so tests can build many.

Names follow Prometheus conventions: `streamrec_` prefix, base units, `_total` counters.
Label values are bounded (reasons and stages from fixed lists; never user or item ids).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from stream.catalogue import CATALOGUE_REJECT_REASONS
from stream.events import REJECT_REASONS

# Click-to-recommendation latency is milliseconds when healthy; the tail buckets keep
# a stalled consumer (seconds) visible instead of piling into +Inf.
LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
)
# model_update includes the upsert of changed item vectors into FAISS that the model
# does inside learn_one.
STAGES = ("decode", "model_update", "search", "produce")
VECTOR_STORES = ("index", "redis")
# Why a user context was evicted (stream/worker/retention.py imports these).
EVICTION_REASONS = ("cap", "idle", "memory")


class WorkerMetrics:
    """Every metric the worker exports; one instance per worker process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            # The standard process_* metrics (CPU seconds, resident and virtual memory,
            # open fds, start time), which a given registry may already hold.
            ProcessCollector(registry=registry)
        self.registry = registry
        self._declare_input(self.registry)
        self._declare_latency(self.registry)
        self._declare_quality(self.registry)
        self._declare_state(self.registry)
        self._declare_serving(self.registry)
        # Pre-create the bounded label sets so dashboards show zeros, not gaps.
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)
        for store in VECTOR_STORES:
            self.vector_freshness.labels(store=store)
        for reason in EVICTION_REASONS:
            self.users_evicted.labels(reason=reason)
        for reason in REJECT_REASONS:
            self.events_rejected.labels(reason=reason)
        for reason in CATALOGUE_REJECT_REASONS:
            self.items_rejected.labels(reason=reason)

    def _declare_input(self, r: CollectorRegistry) -> None:
        """What the worker read and what became of it."""
        self.events_consumed = Counter(
            "streamrec_events_consumed", "Click records read from the clicks topic.", registry=r
        )
        self.events_rejected = Counter(
            "streamrec_events_rejected",
            "Click records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.events_rerouted = Counter(
            "streamrec_events_rerouted",
            "Accepted clicks not keyed to their user's partition, forwarded by user id.",
            registry=r,
        )
        self.duplicates_skipped = Counter(
            "streamrec_duplicates_skipped",
            "Accepted clicks whose event_id was already applied (skipped, no effect).",
            registry=r,
        )
        self.stale_events_skipped = Counter(
            "streamrec_stale_events_skipped",
            "Clicks fetched before a rebalance and still buffered after it: left unapplied "
            "and unacknowledged for their partition's owner to read again.",
            registry=r,
        )
        self.events_out_of_order = Counter(
            "streamrec_events_out_of_order",
            "Accepted clicks older than their user's last applied event (applied in arrival "
            "order with a zero time gap).",
            registry=r,
        )
        self.recommendations_emitted = Counter(
            "streamrec_recommendations_emitted",
            "Recommendation events sent to the recommendations topic.",
            registry=r,
        )
        # The catalogue (the items topic, stream/worker/catalogue.py).
        self.items_consumed = Counter(
            "streamrec_items_consumed",
            "Catalogue records read by this worker's catalogue agent.",
            registry=r,
        )
        self.items_rejected = Counter(
            "streamrec_items_rejected",
            "Catalogue records sent to the items dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.items_cold_started = Counter(
            "streamrec_items_cold_started",
            "New items whose content vector this worker sent to their owner before any click.",
            registry=r,
        )
        self.items_content_refreshed = Counter(
            "streamrec_items_content_refreshed",
            "Never-clicked items whose content vector this worker sent again, as the "
            "content mapping learned.",
            registry=r,
        )
        self.items_unavailable = Gauge(
            "streamrec_items_unavailable",
            "Items the catalogue marks unavailable: never served until available again.",
            registry=r,
        )

    def _declare_latency(self, r: CollectorRegistry) -> None:
        """How long a click takes to become a recommendation, and where the time goes."""
        self.click_to_recommendation = Histogram(
            "streamrec_click_to_recommendation_seconds",
            "Click record timestamp to recommendation send time.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "streamrec_stage_seconds",
            "Time spent per event in each stage of the worker.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_clicks = Histogram(
            "streamrec_batch_clicks",
            "Clicks applied per batch (the model's batch size under this load).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )

    def _declare_variants(self, r: CollectorRegistry) -> None:
        """The online quality and latency of each A/B variant (STREAMREC_VARIANTS): the
        `variant` label takes the configured variants' names only."""
        self.variant_recommendations = Counter(
            "streamrec_variant_recommendations",
            "Recommendation events served by each variant.",
            ["variant"],
            registry=r,
        )
        self.variant_predictions = Counter(
            "streamrec_variant_predictions",
            "Clicks scored against the previous recommendation, by the variant that served it.",
            ["variant"],
            registry=r,
        )
        self.variant_hits = Counter(
            "streamrec_variant_hits",
            "Scored clicks that hit the previous recommendation, by variant.",
            ["variant"],
            registry=r,
        )
        self.variant_reciprocal_rank = Counter(
            "streamrec_variant_reciprocal_rank",
            "Sum of 1/rank of scored clicks (0 for a miss), by variant.",
            ["variant"],
            registry=r,
        )
        self.variant_hit_rate = Gauge(
            "streamrec_variant_hit_rate",
            "Hit rate @ top_k over each variant's last window of scored clicks.",
            ["variant"],
            registry=r,
        )
        self.variant_mrr = Gauge(
            "streamrec_variant_mrr",
            "MRR @ top_k over each variant's last window of scored clicks.",
            ["variant"],
            registry=r,
        )
        self.variant_coverage = Gauge(
            "streamrec_variant_coverage",
            "Share of clicked items shown in each variant's last window of recommendations.",
            ["variant"],
            registry=r,
        )
        self.variant_latency = Histogram(
            "streamrec_variant_click_to_recommendation_seconds",
            "Click record timestamp to recommendation send time, by variant.",
            ["variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def _declare_quality(self, r: CollectorRegistry) -> None:
        """Online quality and the model's learning."""
        # Online quality (stream/worker/quality.py): each click scored against the user's
        # previous recommendation. Counters for exact rates, gauges for a window.
        self.online_predictions = Counter(
            "streamrec_online_predictions",
            "Clicks scored against the user's previous recommendation.",
            registry=r,
        )
        self.online_hits = Counter(
            "streamrec_online_hits",
            "Scored clicks whose item was in the user's previous recommendation (hit @ top_k).",
            registry=r,
        )
        self.online_reciprocal_rank = Counter(
            "streamrec_online_reciprocal_rank",
            "Sum of 1/rank of scored clicks in the previous recommendation (0 for a miss).",
            registry=r,
        )
        self.online_hit_rate = Gauge(
            "streamrec_online_hit_rate",
            "Hit rate @ top_k over the last window of scored clicks.",
            registry=r,
        )
        self.online_mrr = Gauge(
            "streamrec_online_mrr", "MRR @ top_k over the last window of scored clicks.", registry=r
        )
        self.online_coverage = Gauge(
            "streamrec_online_coverage",
            "Share of clicked items shown in the last window of recommendations.",
            registry=r,
        )
        self._declare_variants(r)
        self.vector_freshness = Histogram(
            "streamrec_vector_freshness_seconds",
            "Click record timestamp to the clicked item's new vector being visible, by store.",
            ["store"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_updates = Counter(
            "streamrec_model_updates", "Clicks the model has learned from.", registry=r
        )
        self.model_loss = Gauge(
            "streamrec_model_loss",
            "Training loss of the online model, exponentially averaged over recent steps "
            "(stays 0 for the baselines, which have none).",
            registry=r,
        )

    def _declare_state(self, r: CollectorRegistry) -> None:
        """The users, memory and partitions this worker holds, and its lag."""
        self.users_in_state = Gauge(
            "streamrec_users_in_state",
            "Users whose context this worker holds (its partitions of the user table).",
            registry=r,
        )
        self.users_evicted = Counter(
            "streamrec_users_evicted",
            "User contexts dropped from the table (stream/worker/retention.py), by reason: cap "
            "(STREAMREC_MAX_USERS), idle (STREAMREC_USER_IDLE_S), memory (the cap as lowered "
            "by STREAMREC_MEMORY_CAP_MB).",
            ["reason"],
            registry=r,
        )
        self.user_cap = Gauge(
            "streamrec_user_cap",
            "User contexts this worker may keep (0: no cap); memory pressure can lower it.",
            registry=r,
        )
        self.resident_memory = Gauge(
            "streamrec_resident_memory_bytes",
            "Resident set size of the worker process, sampled every 5 s.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "streamrec_consumer_lag",
            "Records not yet read, per input partition: the high watermark of the last fetch "
            "response minus the next offset to read.",
            ["topic", "partition"],
            registry=r,
        )

    def _declare_serving(self, r: CollectorRegistry) -> None:
        """The model served, readiness, the index and Redis."""
        self.index_items = Gauge(
            "streamrec_index_items", "Item vectors held in the worker's index.", registry=r
        )
        self.model_info = Gauge(
            "streamrec_model_info",
            "Always 1; labels name the recommender and its version.",
            ["model", "version"],
            registry=r,
        )
        self.ready = Gauge(
            "streamrec_worker_ready",
            "1 once the worker's partitions are assigned and its table recovered.",
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "streamrec_assigned_partitions",
            "Partitions of the by-user topic (and user table) this worker owns.",
            registry=r,
        )
        self.redis_write_seconds = Histogram(
            "streamrec_redis_write_seconds",
            "Round trip of one coalesced vector write to Redis.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter(
            "streamrec_redis_errors", "Failed writes to the Redis vector store.", registry=r
        )
        self.redis_up = Gauge(
            "streamrec_redis_up",
            "1 while the Redis vector store answers, 0 during an outage (writes then wait, "
            "newest vector per key kept, with backoff).",
            registry=r,
        )
        self.redis_up.set(1)  # the worker's preflight reached it
        self.redis_repairs = Counter(
            "streamrec_redis_repairs",
            "Times this worker found Redis had lost its vectors and wrote them all back.",
            registry=r,
        )

    def exposition(self) -> bytes:
        """The text exposition format served on /metrics."""
        return generate_latest(self.registry)


def observe_many(histogram: Any, value: float, count: int) -> None:
    """`histogram.observe(value)` `count` times, at the cost of one: a batch's stage
    timings are observed once per batch as the per-event average, so the histogram
    still counts events. `histogram` is a Histogram without labels, or one child."""
    if count <= 0:
        return
    buckets, bounds = _internals(histogram)
    if buckets is None:
        for _ in range(count):
            histogram.observe(value)
        return
    histogram._sum.inc(value * count)
    if value == value:  # NaN lands in no bucket, as with observe()
        buckets[bisect.bisect_left(bounds, value)].inc(count)


def observe_values(histogram: Any, values: Sequence[float] | np.ndarray) -> None:
    """`histogram.observe(v)` for each of `values`, with one increment per bucket hit
    instead of one call per value (a batch's click-to-recommendation latencies)."""
    if len(values) == 0:
        return
    buckets, bounds = _internals(histogram)
    if buckets is None:
        for value in values:
            histogram.observe(float(value))
        return
    array = np.asarray(values, dtype=np.float64)
    histogram._sum.inc(float(array.sum()))
    hits = np.bincount(np.searchsorted(bounds, array, side="left"), minlength=len(buckets))
    for bucket, hit in zip(buckets, hits.tolist(), strict=False):
        if hit:
            bucket.inc(hit)


def _internals(histogram: Any) -> tuple[Any, Any]:
    """The histogram's per-bucket counters (not cumulative; a value counts in the first
    bucket whose upper bound is >= it, as `Histogram.observe` does) and their bounds,
    or (None, None) if this prometheus_client keeps them elsewhere."""
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    if buckets is None or bounds is None or not hasattr(histogram, "_sum"):
        return None, None
    return buckets, bounds


def exported_names(metrics: WorkerMetrics) -> set[str]:
    """Every sample name a query can use (`..._total`, `..._bucket`, a gauge's name);
    not family names such as a counter without `_total`, which Prometheus never stores."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names
