"""The user-eviction policy (stream/worker/retention.py) on a fake clock: known answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.worker.retention import UserRetention, resident_bytes


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def tracking(clicks: list[tuple[bytes, float]], **kwargs: float) -> UserRetention:
    """A retention on a fake clock at 0 that has seen `clicks` (user, event time)."""
    retention = UserRetention(clock=Clock(), **kwargs)  # type: ignore[arg-type]
    for user, event_time in clicks:
        retention.touch(user, event_time)
    return retention


def evicted(retention: UserRetention, **kwargs: object) -> list[tuple[bytes, str]]:
    return [(e.key, e.reason) for e in retention.due(**kwargs)]  # type: ignore[arg-type]


def test_over_the_cap_the_least_recently_active_go_first() -> None:
    clock = Clock()
    retention = UserRetention(max_users=2, safe_after_s=5, clock=clock)
    for n, user in enumerate([b"a", b"b", b"c", b"d"]):
        retention.touch(user, event_time=float(n))
    retention.touch(b"a", event_time=4.0)  # a is active again: b and c are the oldest
    clock.now = 10.0
    assert evicted(retention) == [(b"b", "cap"), (b"c", "cap")]
    assert len(retention) == 2 and b"a" in retention and b"d" in retention
    assert evicted(retention) == []


def test_no_user_is_evicted_within_the_safety_horizon() -> None:
    # A click applied less than safe_after_s ago may not be committed yet: evicting its
    # user would drop the dedup window a redelivery needs.
    clock = Clock()
    retention = UserRetention(max_users=1, safe_after_s=5, clock=clock)
    retention.touch(b"a", 0.0)
    clock.now = 4.0
    retention.touch(b"b", 1.0)
    assert evicted(retention) == []
    clock.now = 5.0
    assert evicted(retention) == [(b"a", "cap")]


def test_users_idle_in_event_time_are_evicted_without_any_cap() -> None:
    clock = Clock()
    retention = UserRetention(idle_s=100, safe_after_s=0, clock=clock)
    for user, event_time in [(b"old", 1000.0), (b"recent", 1950.0), (b"newest", 2000.0)]:
        retention.touch(user, event_time)
    assert evicted(retention) == [(b"old", "idle")]
    # Wall time passing changes nothing: idleness is measured in event time.
    clock.now = 1e9
    assert evicted(retention) == []


def test_busy_users_and_other_workers_users_are_never_evicted() -> None:
    retention = tracking(
        [(b"moved", 0.0), (b"busy", 0.0), (b"kept", 0.0)], max_users=1, safe_after_s=0
    )
    out = evicted(retention, owned=lambda key: key != b"moved", busy={b"busy"})
    assert out == []  # "moved" forgotten, not evicted; "busy" has a record in flight
    assert b"moved" not in retention
    assert evicted(retention) == [(b"busy", "cap")]


def test_adopt_keeps_a_tracked_users_position() -> None:
    retention = tracking([(b"a", 5.0), (b"b", 6.0)], max_users=1, safe_after_s=0)
    retention.adopt(b"a", 0.0)  # already tracked: not moved to the end
    assert evicted(retention) == [(b"a", "cap")]


def test_memory_pressure_lowers_the_cap_once_per_growth() -> None:
    retention = tracking(
        [(b"u%d" % n, float(n)) for n in range(50)],
        max_users=100,
        safe_after_s=0,
        memory_cap_bytes=1000,
    )
    assert not retention.note_resident(900)  # under the cap
    assert retention.note_resident(1200)
    assert retention.cap == 45
    # Resident size rarely shrinks after frees: the same reading must not drain users.
    assert not retention.note_resident(1200)
    assert retention.cap == 45
    reasons = {reason for _, reason in evicted(retention)}
    assert reasons == {"memory"} and len(retention) == 45
    assert not retention.note_resident(None)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        UserRetention(max_users=-1, safe_after_s=0)


def test_resident_bytes_reads_proc_or_says_none(tmp_path: Path) -> None:
    real = resident_bytes()
    if Path("/proc/self/statm").exists():
        assert real is not None and real > 10 * 1024 * 1024  # this Python, torch loaded or not
    assert resident_bytes(tmp_path / "missing") is None
    (tmp_path / "statm").write_text("garbage")
    assert resident_bytes(tmp_path / "statm") is None
