"""Live quality tracking: known answers for hit rate, MRR, coverage and the window."""

from __future__ import annotations

import pytest

from stream.metrics import WorkerMetrics
from stream.worker.quality import OnlineQuality


def sample(metrics: WorkerMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def test_hits_and_reciprocal_ranks_are_known_answers() -> None:
    metrics = WorkerMetrics()
    quality = OnlineQuality(metrics, window=10)
    assert quality.score_click((), "a") is None  # a first click has nothing to score
    assert quality.score_click(("a", "b", "c"), "a") == 1.0
    assert quality.score_click(("a", "b", "c"), "c") == pytest.approx(1 / 3)
    assert quality.score_click(("a", "b", "c"), "z") == 0.0
    assert quality.hit_rate == pytest.approx(2 / 3)
    assert quality.mrr == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert sample(metrics, "streamrec_online_predictions_total") == 3
    assert sample(metrics, "streamrec_online_hits_total") == 2
    assert sample(metrics, "streamrec_online_reciprocal_rank_total") == pytest.approx(4 / 3)
    assert sample(metrics, "streamrec_online_hit_rate") == pytest.approx(2 / 3)


def test_the_window_forgets_old_predictions_but_the_counters_do_not() -> None:
    metrics = WorkerMetrics()
    quality = OnlineQuality(metrics, window=2)
    quality.score_click(("a",), "a")  # hit, then two misses push it out of the window
    quality.score_click(("a",), "b")
    quality.score_click(("a",), "c")
    assert quality.hit_rate == 0.0 and quality.mrr == 0.0
    assert sample(metrics, "streamrec_online_hits_total") == 1


def test_coverage_is_the_share_of_clicked_items_shown_in_the_window() -> None:
    metrics = WorkerMetrics()
    quality = OnlineQuality(metrics, window=2)
    for item in ("a", "b", "c", "d"):
        quality.score_click((), item)
    quality.record_shown(("a", "b"))
    assert quality.coverage == pytest.approx(2 / 4)
    quality.record_shown(("b", "c"))
    assert quality.coverage == pytest.approx(3 / 4)
    quality.record_shown(("c",))  # ("a", "b") leaves the window; "a" is no longer shown
    assert quality.coverage == pytest.approx(2 / 4)
    assert sample(metrics, "streamrec_online_coverage") == pytest.approx(2 / 4)
