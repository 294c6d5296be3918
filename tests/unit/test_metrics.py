"""Batch observation of histograms (stream/metrics.py) gives the samples that one
`observe` per value gives."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram

from stream.metrics import LATENCY_BUCKETS, observe_many, observe_values

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
