"""UserTable's eviction and recovery over a plain dict table (stream/worker/users.py)."""

from __future__ import annotations

import asyncio

from model.registry import build_recommender
from stream.events import Click
from stream.metrics import WorkerMetrics
from stream.worker.pipeline import ClickProcessor, UserRecord
from stream.worker.retention import UserRetention
from stream.worker.users import UserTable, owning_partition

T = 1_700_000_000.0
PARTITIONS = 4
PROCESSOR = ClickProcessor(
    build_recommender("covisit"), None, WorkerMetrics(), top_k=5, exclude="seen", dedup_window=8
)


def record_at(user: str, at: float) -> UserRecord:
    """`user`'s record after one click at event time `at`."""
    click = Click(user, "item", at, event_id=f"{user}@{at}")
    return PROCESSOR.process(click, PROCESSOR.new_record(), click.event_id or "").record


def users_on(partition: int, count: int) -> list[str]:
    """The first `count` user ids whose records land on `partition`."""
    found = (f"user{n}" for n in range(10_000))
    return [u for u in found if owning_partition(u.encode(), PARTITIONS) == partition][:count]


def table(
    owned: set[int], max_users: int = 0, idle_s: float = 0.0
) -> tuple[UserTable, dict[bytes, bytes], WorkerMetrics]:
    raw: dict[bytes, bytes] = {}
    metrics = WorkerMetrics()
    retention = UserRetention(max_users, idle_s, safe_after_s=0)
    users = UserTable(
        raw, retention, metrics, partitions=PARTITIONS, owned_partitions=lambda: owned
    )
    return users, raw, metrics


def evicted(metrics: WorkerMetrics, reason: str) -> float:
    return (
        metrics.registry.get_sample_value("streamrec_users_evicted_total", {"reason": reason})
        or 0.0
    )


def write(users: UserTable, user: str, at: float) -> UserRecord:
    record = record_at(user, at)
    users.hold(user.encode(), record)
    asyncio.run(users.write_batch({user.encode(): record}))
    return record


def test_a_due_user_is_deleted_from_the_table() -> None:
    users, raw, metrics = table(owned={0}, max_users=2)
    old, middle, new = users_on(0, 3)
    for n, user in enumerate([old, middle, new]):
        write(users, user, T + n)
    asyncio.run(users.evict_users())
    assert set(raw) == {middle.encode(), new.encode()}  # the least recent went
    assert evicted(metrics, "cap") == 1
    assert metrics.registry.get_sample_value("streamrec_users_in_state") == 2


def test_an_idle_user_is_deleted_by_event_time() -> None:
    users, raw, metrics = table(owned={0}, idle_s=60)
    idle, active = users_on(0, 2)
    write(users, idle, T)
    write(users, active, T + 61)
    asyncio.run(users.evict_users())
    assert set(raw) == {active.encode()}
    assert evicted(metrics, "idle") == 1


def test_a_user_with_a_record_in_flight_is_never_evicted() -> None:
    users, raw, metrics = table(owned={0}, max_users=1)
    busy, other = users_on(0, 2)
    write(users, busy, T)
    write(users, other, T + 1)
    users.hold(busy.encode(), record_at(busy, T + 2))  # applied, not yet written
    asyncio.run(users.evict_users())
    assert set(raw) == {busy.encode(), other.encode()}
    assert evicted(metrics, "cap") == 0
    assert users.current_record(busy.encode()) is users.in_flight[busy.encode()]


def test_users_of_partitions_this_worker_does_not_own_are_not_evicted() -> None:
    users, raw, metrics = table(owned={1}, max_users=1)
    standby = users_on(0, 2)  # partition 0 is another worker's: its copies stay
    for n, user in enumerate(standby):
        write(users, user, T + n)
    asyncio.run(users.evict_users())
    assert set(raw) == {user.encode() for user in standby}
    assert evicted(metrics, "cap") == 0


def test_recovered_users_are_adopted_oldest_first() -> None:
    users, raw, metrics = table(owned={0}, max_users=1)
    newest, oldest, middle = users_on(0, 3)
    (elsewhere,) = users_on(1, 1)
    # Recovered from the changelog in no particular order, one of them a standby copy.
    for user, at in [(newest, T + 2), (oldest, T), (elsewhere, T - 10), (middle, T + 1)]:
        raw[user.encode()] = record_at(user, at).to_bytes()
    users.adopt_recovered_users()
    assert elsewhere.encode() not in users.retention
    asyncio.run(users.evict_users())  # over the cap of 1: the two oldest go, oldest first
    assert set(raw) == {newest.encode(), elsewhere.encode()}
    assert evicted(metrics, "cap") == 2
    users.adopt_recovered_users()  # idempotent: nothing new to track
    assert len(users.retention) == 1
