"""`evaluate`'s progress on a stderr that is not a terminal (issue 17: a 33-52 minute run
with `--json` and stderr redirected printed nothing until it ended)."""

from __future__ import annotations

import pytest

from stream.offline.evaluate import _progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_plain_line_at_every_tenth_with_events_and_rate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = Clock()
    with _progress_bar("torch", 1000, disabled=False, clock=clock) as update:
        for _ in range(1000):
            clock.now += 0.01  # 100 events/s
            update(1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10
    assert lines[0] == "torch: 100/1,000 events (10%), 100 events/s, 1 s"
    assert lines[-1] == "torch: 1,000/1,000 events (100%), 100 events/s, 10 s"


def test_a_slow_run_still_prints_a_line_a_minute(capsys: pytest.CaptureFixture[str]) -> None:
    # Expected: 30 events in 3 minutes, under a tenth of 1,000: one line per minute, then
    # a last line at the end with what was done.
    clock = Clock()
    with _progress_bar("covisit", 1000, disabled=False, clock=clock) as update:
        for _ in range(30):
            clock.now += 6.0
            update(1)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[1].split(" events")[0] for line in lines] == [
        "10/1,000",
        "20/1,000",
        "30/1,000",
    ]


def test_quiet_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with _progress_bar("torch", 10, disabled=True) as update:
        for _ in range(10):
            update(1)
    assert capsys.readouterr().err == ""
