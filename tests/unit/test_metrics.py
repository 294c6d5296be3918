"""Batch observation of histograms (stream/metrics.py) gives the samples that one
`observe` per value gives; label sets are pre-created so dashboards show zeros."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from stream.dev.generate import POLICIES, bad_input_corpus, malformed_records
from stream.events import REJECT_REASONS, Rejected, decode_click
from stream.metrics import LATENCY_BUCKETS, WorkerMetrics, observe_many, observe_values

NOW = 1_700_000_000.0

VALUES = [0.0, 0.0005, 0.001, 0.0011, 0.02, 0.3, 0.3, 4.0, 31.0, 1e9, math.nan]


def histograms() -> tuple[Histogram, Histogram]:
    def one() -> Histogram:
        return Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())

    return one(), one()


def samples(histogram: Histogram) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in histogram.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    ]


def same(left: Histogram, right: Histogram) -> bool:
    """Equal bucket counts and counts; sums equal up to float rounding."""
    a, b = samples(left), samples(right)
    return [s[:2] for s in a] == [s[:2] for s in b] and all(
        x[2] == pytest.approx(y[2], rel=1e-12) if x[0] == "h_sum" else x[2] == y[2]
        for x, y in zip(a, b, strict=True)
    )


def test_observe_values_matches_one_observe_per_value() -> None:
    batched, single = histograms()
    observe_values(batched, VALUES[:-1])
    for value in VALUES[:-1]:
        single.observe(value)
    assert same(batched, single)


def test_observe_many_matches_repeated_observes() -> None:
    for value in VALUES[:-1]:
        batched, single = histograms()
        observe_many(batched, value, 7)
        for _ in range(7):
            single.observe(value)
        assert same(batched, single), value


def test_nan_and_empty_batches_count_in_no_bucket() -> None:
    batched, single = histograms()
    observe_many(batched, math.nan, 3)
    observe_many(batched, 0.1, 0)
    observe_values(batched, [])
    observe_values(batched, [math.nan])
    single.observe(math.nan)
    buckets = [s for s in samples(batched) if s[0] == "h_bucket"]
    assert buckets == [s for s in samples(single) if s[0] == "h_bucket"]
    assert all(value == 0 for _, _, value in buckets)


# Label sets known only at run time: the worker sets them on start and on assignment.
# Label sets known only at run time: the model, the consumed topics, and the A/B
# variants the settings name (the click path creates each variant's at start).
SET_AT_RUN_TIME = {
    "streamrec_model_info",
    "streamrec_consumer_lag",
    *(
        f"streamrec_variant_{name}"
        for name in (
            "recommendations",
            "predictions",
            "hits",
            "reciprocal_rank",
            "hit_rate",
            "mrr",
            "coverage",
            "click_to_recommendation_seconds",
        )
    ),
}


def test_every_bounded_label_set_is_pre_created_so_dashboards_show_zeros() -> None:
    # A family without samples is a labelled one with no label set created yet.
    empty = {f.name for f in WorkerMetrics().registry.collect() if not f.samples}
    assert empty == SET_AT_RUN_TIME
    rejected = {
        s.labels["reason"]: s.value
        for family in WorkerMetrics().registry.collect()
        if family.name == "streamrec_events_rejected"
        for s in family.samples
        if s.name == "streamrec_events_rejected_total"
    }
    assert rejected == dict.fromkeys(REJECT_REASONS, 0.0)


def test_every_reason_a_bad_record_gets_is_a_pre_created_one() -> None:
    max_bytes = 1024
    values = [r.value for r in bad_input_corpus(max_bytes, now=NOW) if r.expect not in POLICIES]
    values += [value for value, _reason in malformed_records(max_bytes)]
    reasons = set()
    for value in values:
        result = decode_click(value, record_timestamp=NOW, max_bytes=max_bytes)
        assert isinstance(result, Rejected), value[:80]
        reasons.add(result.reason)
    assert reasons == set(REJECT_REASONS)


@given(st.binary(max_size=200))
def test_any_rejection_of_arbitrary_bytes_has_a_known_reason(value: bytes) -> None:
    result = decode_click(value, record_timestamp=NOW, max_bytes=100)
    assert not isinstance(result, Rejected) or result.reason in REJECT_REASONS
