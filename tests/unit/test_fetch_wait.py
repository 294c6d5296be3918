"""The fetch wait grows only while partitions are behind and fetches come back empty,
and relaxes back towards its base, one step per quiet interval."""

from __future__ import annotations

import pytest

from stream.kafka.fetch_wait import FetchWait


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_starved_rounds_double_the_wait_up_to_the_ceiling() -> None:
    wait = FetchWait(10, ceiling_ms=100, clock=Clock())
    assert [wait.after_round(False, True) for _ in range(5)] == [20, 40, 80, 100, 100]


def test_records_or_nothing_to_read_never_raise_it() -> None:
    wait = FetchWait(10, clock=Clock())
    assert wait.after_round(True, True) == 10  # behind, but records came
    assert wait.after_round(False, False) == 10  # caught up: an empty fetch is normal


def test_a_working_wait_is_kept_then_tried_shorter_each_quiet_interval() -> None:
    clock = Clock()
    wait = FetchWait(10, relax_s=30.0, clock=clock)
    for _ in range(3):
        wait.after_round(False, True)
    assert wait.current_ms == 80
    clock.now = 29.0
    assert wait.after_round(True, True) == 80
    clock.now = 30.0
    assert wait.after_round(True, False) == 60
    clock.now = 45.0
    assert wait.after_round(True, False) == 60  # one step per interval
    clock.now = 60.0
    assert wait.after_round(False, False) == 45
    for step in range(1, 10):
        clock.now = 60.0 + 30 * step
        wait.after_round(True, False)
    assert wait.current_ms == 10  # never below the setting


def test_a_zero_base_still_grows() -> None:
    wait = FetchWait(0, clock=Clock())
    assert wait.after_round(False, True) == 2


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        FetchWait(50, ceiling_ms=10)
