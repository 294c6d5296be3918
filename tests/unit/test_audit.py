"""The fault harness's verdict helpers (stream/dev/audit.py) on records built by hand."""

from __future__ import annotations

from model.base import UserContext
from stream.dev.audit import USER_FIELDS, state_differences, state_mismatches
from stream.worker.records import UserRecord


def record(recent: tuple[str, ...], applied: int) -> UserRecord:
    return UserRecord(UserContext(recent=recent, clicks=applied), applied=applied)


def test_a_failed_comparison_names_each_differing_field_with_both_values() -> None:
    run = {"u1": record(("a", "b"), 2), "u2": record(("c",), 1), "u3": record(("d",), 1)}
    replay = {"u1": record(("b", "a"), 2), "u2": record(("c",), 1), "u4": record(("e",), 1)}
    mismatched = state_mismatches(run, replay, USER_FIELDS)
    assert mismatched == ["u1", "u3", "u4"]
    assert state_differences(run, replay, USER_FIELDS, mismatched) == [
        "u1: recent run=('a', 'b') replay=('b', 'a')",
        "u3: only in the run",
        "u4: only in the replay",
    ]
