"""The arithmetic behind bench/e2e.py's backlog and rate-ladder figures, and what
`python -m bench.ceiling` prints (no services)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.e2e import backlog, climb_to


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

    steps, found_by_goal = climb_to(rates, measure, [20])
    found = found_by_goal[20]
    assert calls == list(enumerate(rates))[:measured]
    assert len(steps) == measured and found == best


def test_one_ladder_answers_every_goal_and_stops_once_the_loosest_is_missed() -> None:
    rates = [100.0, 200.0, 300.0, 400.0, 500.0]
    p99s = [15, 25, 40, 60, 10]
    calls: list[float] = []

    def measure(i: int, rate: float) -> dict[str, float]:
        calls.append(rate)
        return step(p99s[i], 0)

    steps, best = climb_to(rates, measure, [20, 50])
    # 20 ms is missed at 200/s; the climb goes on for 50 ms, missed at 400/s, and stops.
    assert calls == [100.0, 200.0, 300.0, 400.0] and len(steps) == 4
    assert best == {20: 100.0, 50: 300.0}


def test_the_ceiling_command_prints_each_run_and_the_median_cpu_per_click() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.ceiling",
            "--events",
            "300",
            "--items",
            "2000",
            "--runs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert sum(line.startswith("run ") for line in lines) == 2
    summary = json.loads(lines[-1])
    cpu = [run["cpu_us_per_click"] for run in summary["runs"]]
    assert summary["events"] == 300 and all(c > 0 for c in cpu)
    assert summary["median_cpu_us_per_click"] == sorted(cpu)[1]


def test_latency_bench_reads_batch_and_stage_figures_from_two_scrapes() -> None:
    from bench.latency import worker_figures

    before = {
        ("batch_clicks", "", "sum"): 100.0,
        ("batch_clicks", "", "count"): 10.0,
        ("stage_seconds", "search", "sum"): 1.0,
        ("stage_seconds", "search", "count"): 100.0,
    }
    after = {
        ("batch_clicks", "", "sum"): 400.0,  # 300 clicks in 20 batches
        ("batch_clicks", "", "count"): 30.0,
        ("stage_seconds", "search", "sum"): 1.6,  # 0.6 s over those 300 clicks
        ("stage_seconds", "search", "count"): 400.0,
    }
    figures = worker_figures(before, after)
    assert figures["mean_batch"] == pytest.approx(15.0)
    assert figures["search_us_per_click"] == pytest.approx(2000.0)
