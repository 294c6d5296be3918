"""Live recommendation quality: did the user's next click land in what we last showed?

Each accepted click is scored against the recommendation the same user received after
their previous click: a hit if the clicked item is in it, with reciprocal rank 1/rank.
Counters give Prometheus the exact long-run rates (`rate(hits) / rate(predictions)`);
the gauges are the same figures over the last `window` predictions, for the live page
and for users without Prometheus. Coverage is the share of the index's items that
were clicked so far and appear in the recommendations of that window.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Sequence

from stream.metrics import WorkerMetrics


class OnlineQuality:
    """Sliding-window hit rate, MRR and coverage; O(k) per observation."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        window: int = 1000,
        variant: str | None = None,
        catalogue: set[str] | None = None,
    ) -> None:
        """`variant`: publish to that A/B variant's labelled metrics instead of the
        worker's own. `catalogue`: the clicked items coverage is a share of, shared with
        another window (a variant's coverage is of every clicked item, not only of the
        items its own users clicked)."""
        self.window = window
        if variant is None:
            self._predictions_total, self._hits_total = (
                metrics.online_predictions,
                metrics.online_hits,
            )
            self._reciprocal_rank_total = metrics.online_reciprocal_rank
            self._hit_rate_gauge, self._mrr_gauge = metrics.online_hit_rate, metrics.online_mrr
            self._coverage_gauge = metrics.online_coverage
        else:
            self._predictions_total = metrics.variant_predictions.labels(variant=variant)
            self._hits_total = metrics.variant_hits.labels(variant=variant)
            self._reciprocal_rank_total = metrics.variant_reciprocal_rank.labels(variant=variant)
            self._hit_rate_gauge = metrics.variant_hit_rate.labels(variant=variant)
            self._mrr_gauge = metrics.variant_mrr.labels(variant=variant)
            self._coverage_gauge = metrics.variant_coverage.labels(variant=variant)
        self._reciprocal_ranks: deque[float] = deque()
        self._hits = 0
        self._rr_sum = 0.0
        self._shown: deque[tuple[str, ...]] = deque()
        self._shown_counts: Counter[str] = Counter()
        self._catalogue: set[str] = set() if catalogue is None else catalogue

    @property
    def hit_rate(self) -> float:
        n = len(self._reciprocal_ranks)
        return self._hits / n if n else 0.0

    @property
    def mrr(self) -> float:
        n = len(self._reciprocal_ranks)
        return self._rr_sum / n if n else 0.0

    @property
    def catalogue(self) -> set[str]:
        """The clicked items so far (shared, not copied)."""
        return self._catalogue

    @property
    def coverage(self) -> float:
        return len(self._shown_counts) / len(self._catalogue) if self._catalogue else 0.0

    def score_click(self, previous: Sequence[str], clicked: str) -> float | None:
        """Score a click against the user's previous recommendation; returns the
        reciprocal rank (0.0 for a miss), or None when there was nothing to score."""
        reciprocal_rank = self._score(previous, clicked)
        if reciprocal_rank is not None:
            self._publish(1, reciprocal_rank > 0, reciprocal_rank)
        return reciprocal_rank

    def score_clicks(self, scored: Iterable[tuple[Sequence[str], str]]) -> None:
        """`score_click` for each (previous recommendation, clicked item) in order,
        with the metrics updated once at the end (a batch's clicks)."""
        predictions = hits = 0
        rr_sum = 0.0
        for previous, clicked in scored:
            reciprocal_rank = self._score(previous, clicked)
            if reciprocal_rank is not None:
                predictions += 1
                hits += reciprocal_rank > 0
                rr_sum += reciprocal_rank
        if predictions:
            self._publish(predictions, hits, rr_sum)

    def _score(self, previous: Sequence[str], clicked: str) -> float | None:
        self._catalogue.add(clicked)
        if not previous:
            return None
        try:
            reciprocal_rank = 1.0 / (previous.index(clicked) + 1)
        except ValueError:
            reciprocal_rank = 0.0
        self._reciprocal_ranks.append(reciprocal_rank)
        self._hits += reciprocal_rank > 0
        self._rr_sum += reciprocal_rank
        if len(self._reciprocal_ranks) > self.window:
            dropped = self._reciprocal_ranks.popleft()
            self._hits -= dropped > 0
            self._rr_sum -= dropped
        return reciprocal_rank

    def _publish(self, predictions: int, hits: int, rr_sum: float) -> None:
        self._predictions_total.inc(predictions)
        if hits:
            self._hits_total.inc(hits)
            self._reciprocal_rank_total.inc(rr_sum)
        self._hit_rate_gauge.set(self.hit_rate)
        self._mrr_gauge.set(self.mrr)

    def record_shown(self, items: Sequence[str]) -> None:
        """Remember a recommendation for the coverage window."""
        self._remember(tuple(items))
        self._coverage_gauge.set(self.coverage)

    def record_shown_many(self, shown: Iterable[tuple[str, ...]]) -> None:
        """`record_shown` for each recommendation in order, the gauge set once."""
        for items in shown:
            self._remember(items)
        self._coverage_gauge.set(self.coverage)

    def _remember(self, shown: tuple[str, ...]) -> None:
        self._shown.append(shown)
        self._shown_counts.update(shown)
        if len(self._shown) > self.window:
            counts = self._shown_counts
            # One pass instead of Counter.subtract and a sweep for zeros (per click).
            for item in self._shown.popleft():
                left = counts[item] - 1
                if left > 0:
                    counts[item] = left
                else:
                    del counts[item]
