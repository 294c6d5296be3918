"""The arithmetic behind bench/e2e.py's backlog and rate-ladder figures (no services)."""

from __future__ import annotations

import math

import pytest

from bench.e2e import backlog, climb


def test_backlog_counts_unanswered_at_the_last_send_and_never() -> None:
    sent = {"a": 100, "b": 110, "c": 120, "d": 130}
    out = {"a": 105, "b": 131, "c": 125}  # b answered after the last send; d never
    assert backlog(sent, out) == {"missing": 1, "backlog_at_end": 2, "drain_ms": 1}


def test_backlog_of_a_run_that_kept_up() -> None:
    sent = {str(i): 10 * i for i in range(100)}
    out = {str(i): 10 * i + 3 for i in range(100)}
    figures = backlog(sent, out)
    assert figures["missing"] == 0 and figures["backlog_at_end"] == 1
    assert figures["drain_ms"] == 3


def test_backlog_with_nothing_answered() -> None:
    figures = backlog({"a": 1, "b": 2}, {})
    assert figures["missing"] == 2 and figures["backlog_at_end"] == 2
    assert math.isnan(figures["drain_ms"])


def step(p99: float, missing: int = 0) -> dict[str, float]:
    return {"latency_ms_p99": p99, "missing": missing}


@pytest.mark.parametrize(
    ("p99s", "missing", "measured", "best"),
    [
        ([5, 8, 19, 25, 9], [0] * 5, 4, 300.0),  # stops at the first miss, not after it
        ([5, 8, 19, 20, 9], [0] * 5, 5, 500.0),  # exactly the goal meets it
        ([30, 1, 1, 1, 1], [0] * 5, 1, 0.0),  # none met
        ([5, 5, 5, 5, 5], [0, 0, 3, 0, 0], 3, 200.0),  # a lost click is a miss
    ],
)
def test_climb_stops_at_the_first_rate_that_misses(
    p99s: list[float], missing: list[int], measured: int, best: float
) -> None:
    rates = [100.0, 200.0, 300.0, 400.0, 500.0]
    calls: list[tuple[int, float]] = []

    def measure(i: int, rate: float) -> dict[str, float]:
        calls.append((i, rate))
        return step(p99s[i], missing[i])

    steps, found = climb(rates, measure, goal_ms=20)
    assert calls == list(enumerate(rates))[:measured]
    assert len(steps) == measured and found == best
