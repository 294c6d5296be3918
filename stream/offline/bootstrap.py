"""Confidence intervals and p-values for per-arm click metrics, by a bootstrap over users.

An arm's HR (or MRR) is a ratio estimator: the hits (reciprocal ranks) of all its users
over their scored clicks. Its clicks are not independent draws: one user's clicks share
that user's tastes and the lists one model state gave them, so a binomial interval over
clicks would be too narrow. The user is also the unit of randomisation (variants split
users, not clicks). So the unit resampled is the user: each replicate draws the arm's
users with replacement and keeps all of each drawn user's clicks, which carries the
within-user correlation into the interval (the cluster bootstrap; Efron & Tibshirani,
*An Introduction to the Bootstrap*, 1993, ch. 13).

- Interval: the 2.5th and 97.5th percentiles of the replicates (percentile bootstrap).
- Difference of an arm against the baseline: the arms are resampled independently
  (disjoint users), the replicate differences give the percentile interval, and the
  two-sided p-value is that interval's inversion, 2 * min(share of differences <= 0,
  share >= 0), never below 1/B: with B replicates a smaller p cannot be told apart.

Pure numpy, no I/O. The resampling is vectorised: a chunk of replicates' resample
counts per user at a time (`np.bincount` of uniform draws, multinomial counts),
multiplied by the users' totals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
# Cells (replicates x users) drawn at once: the draws and the counts are int64 arrays
# of this size each, so the peak is about 16 bytes a cell.
_CHUNK_CELLS = 20_000_000


@dataclass(frozen=True)
class UserTotals:
    """One arm's users, one entry per user with at least one scored click: their
    scored clicks, hits and sum of reciprocal ranks."""

    clicks: np.ndarray
    hits: np.ndarray
    reciprocal_ranks: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.clicks) == len(self.hits) == len(self.reciprocal_ranks)):
            raise ValueError("clicks, hits and reciprocal_ranks must be one entry per user")
        if len(self.clicks) == 0 or np.any(self.clicks < 1):
            raise ValueError("an arm needs users, each with at least one scored click")


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class ArmEstimate:
    """An arm's figures; `hr_replicates` and `mrr_replicates` are its bootstrap
    replicates, kept for the differences."""

    users: int
    clicks: int
    hr: Interval
    mrr: Interval
    hr_replicates: np.ndarray = field(repr=False)
    mrr_replicates: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class Difference:
    """An arm minus the baseline: interval and bootstrap p-value of each metric."""

    hr: Interval
    hr_p: float
    mrr: Interval
    mrr_p: float


def resample_sums(totals: UserTotals, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, 3): the clicks, hits and reciprocal-rank sums of each replicate,
    each replicate being len(users) users drawn with replacement."""
    users = len(totals.clicks)
    per_user = np.stack([totals.clicks, totals.hits, totals.reciprocal_ranks], axis=1).astype(
        np.float64
    )
    sums = np.empty((resamples, 3))
    chunk = max(1, _CHUNK_CELLS // users)
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        # Row r's draws are offset by r * users so one bincount counts every row.
        draws = rng.integers(0, users, size=(rows, users))
        draws += (np.arange(rows) * users)[:, None]
        counts = np.bincount(draws.ravel(), minlength=rows * users).reshape(rows, users)
        sums[start : start + rows] = counts @ per_user
    return sums


def estimate_arm(totals: UserTotals, resamples: int, rng: np.random.Generator) -> ArmEstimate:
    """HR and MRR of an arm (ratio estimators) with percentile intervals."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    clicks = int(totals.clicks.sum())
    sums = resample_sums(totals, resamples, rng)
    # Every user has a scored click, so no replicate divides by zero.
    hr_replicates = sums[:, 1] / sums[:, 0]
    mrr_replicates = sums[:, 2] / sums[:, 0]
    return ArmEstimate(
        users=len(totals.clicks),
        clicks=clicks,
        hr=_interval(float(totals.hits.sum()) / clicks, hr_replicates),
        mrr=_interval(float(totals.reciprocal_ranks.sum()) / clicks, mrr_replicates),
        hr_replicates=hr_replicates,
        mrr_replicates=mrr_replicates,
    )


def compare(arm: ArmEstimate, baseline: ArmEstimate) -> Difference:
    """`arm` minus `baseline`, from their independent replicates (same count each)."""
    hr_diffs = arm.hr_replicates - baseline.hr_replicates
    mrr_diffs = arm.mrr_replicates - baseline.mrr_replicates
    return Difference(
        hr=_interval(arm.hr.estimate - baseline.hr.estimate, hr_diffs),
        hr_p=two_sided_p(hr_diffs),
        mrr=_interval(arm.mrr.estimate - baseline.mrr.estimate, mrr_diffs),
        mrr_p=two_sided_p(mrr_diffs),
    )


def two_sided_p(differences: np.ndarray) -> float:
    """2 * min(share <= 0, share >= 0) of the replicate differences, in [1/B, 1]."""
    below = float(np.mean(differences <= 0))
    above = float(np.mean(differences >= 0))
    return min(1.0, max(1.0 / len(differences), 2 * min(below, above)))


def _interval(estimate: float, replicates: np.ndarray) -> Interval:
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return Interval(estimate, float(low), float(high))


__all__ = [
    "CONFIDENCE",
    "DEFAULT_RESAMPLES",
    "ArmEstimate",
    "Difference",
    "Interval",
    "UserTotals",
    "compare",
    "estimate_arm",
    "resample_sums",
    "two_sided_p",
]
