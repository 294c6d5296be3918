"""BatchApplier's commit order, the worker's exactly-once argument (stream/worker/applier.py):
every delta and recommendation is sent and durable before any user record is written.

The sinks and the table record into one shared log, so the order of every effect can
be read back; "durable" marks the moment the applier awaited a send's acknowledgement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from model.registry import build_recommender
from stream.events import Click
from stream.metrics import WorkerMetrics
from stream.worker.applier import BatchApplier
from stream.worker.pipeline import Accepted, ClickProcessor, UserRecord
from stream.worker.retention import UserRetention
from stream.worker.users import UserTable
from stream.worker.views import RecentRecommendations

T = 1_700_000_000.0
PARTITIONS = 4


class LoggedTable(dict[bytes, bytes]):
    """A user table that logs every write into the shared log."""

    def __init__(self, log: list[tuple[str, ...]]) -> None:
        super().__init__()
        self.log = log

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.log.append(("write", key.decode()))
        super().__setitem__(key, value)


class Harness:
    """A BatchApplier over a real ClickProcessor (popularity model), a dict table and
    two list sinks; `deltas_per_batch` delta records are "sent" by each batch."""

    def __init__(self, deltas_per_batch: int = 2) -> None:
        self.log: list[tuple[str, ...]] = []
        self.metrics = WorkerMetrics()
        self.table = LoggedTable(self.log)
        recommender = build_recommender("popularity")
        processor = ClickProcessor(
            recommender, None, self.metrics, top_k=5, exclude="seen", dedup_window=8
        )
        self.users = UserTable(
            self.table,
            UserRetention(safe_after_s=0),
            self.metrics,
            partitions=PARTITIONS,
            owned_partitions=lambda: range(PARTITIONS),
        )
        self.deltas_per_batch = deltas_per_batch
        self.applier = BatchApplier(
            processor,
            self.users,
            send_deltas=self.send_deltas,
            send_recommendations=self.send_recommendations,
            metrics=self.metrics,
            index=[],
            recent=RecentRecommendations(),
        )

    def send_deltas(self) -> list[Awaitable[Any]]:
        names = [f"delta{n}" for n in range(self.deltas_per_batch)]
        self.log.extend(("send", name) for name in names)
        return [self._durable(name) for name in names]

    async def send_recommendations(
        self, recommendations: list[tuple[bytes, bytes]]
    ) -> list[Awaitable[Any]]:
        names = [f"rec:{user_key.decode()}" for user_key, _ in recommendations]
        self.log.extend(("send", name) for name in names)
        await asyncio.sleep(0)  # a real send yields to the loop: the other agent runs
        return [self._durable(name) for name in names]

    async def _durable(self, name: str) -> None:
        await asyncio.sleep(0)
        self.log.append(("durable", name))

    def apply(self, *batches: list[Accepted]) -> None:
        async def main() -> None:
            await asyncio.gather(*(self.applier.apply(batch) for batch in batches))

        asyncio.run(main())

    def entries(self, kind: str) -> list[int]:
        return [n for n, entry in enumerate(self.log) if entry[0] == kind]


def accepted(user: str, item: str, event_id: str, at: float = T, offset: int = 0) -> Accepted:
    click = Click(user, item, at, event_id=event_id)
    return Accepted(click, user.encode(), event_id, at, "c0", offset)


def test_every_delta_and_recommendation_is_durable_before_any_user_record_is_written() -> None:
    harness = Harness()
    harness.apply(
        [
            accepted("u1", "a", "e1"),
            accepted("u2", "b", "e2"),
            accepted("u1", "c", "e3", T + 1),
        ]
    )
    sends = [entry[1] for entry in harness.log if entry[0] == "send"]
    durables = [entry[1] for entry in harness.log if entry[0] == "durable"]
    assert sorted(sends) == sorted(durables) == ["delta0", "delta1", "rec:u1", "rec:u1", "rec:u2"]
    writes = harness.entries("write")
    assert len(writes) == 2  # one record per user, not per click
    assert max(harness.entries("send") + harness.entries("durable")) < min(writes), harness.log
    assert harness.users.in_flight == {}


def test_a_users_records_are_written_in_the_order_their_batches_were_applied() -> None:
    harness = Harness()
    # Two agents' batches for one user, interleaved at the sends: the second applies
    # its click on top of the first's in-flight record. Both are written, in order, so
    # the first batch's click is durable when the first batch is, and the table ends
    # with the newest.
    harness.apply([accepted("u1", "a", "e1")], [accepted("u1", "b", "e2", T + 1)])
    assert [entry for entry in harness.log if entry[0] == "write"] == [("write", "u1")] * 2
    record = UserRecord.from_bytes(harness.table[b"u1"])
    assert record.event_ids == ("e1", "e2") and record.applied == 2
    assert harness.users.in_flight == {}


def test_a_batch_writes_only_after_the_batch_applied_before_it_has_written() -> None:
    harness = Harness(deltas_per_batch=0)
    first_acked = asyncio.Event()
    order: list[str] = []

    async def slow_then_fast(recommendations: list[tuple[bytes, bytes]]) -> list[Awaitable[Any]]:
        user = recommendations[0][0].decode()

        async def durable() -> None:
            if user == "u1":  # the first batch's acknowledgement comes last
                await first_acked.wait()
            order.append(f"durable {user}")

        return [asyncio.ensure_future(durable())]

    harness.applier.send_recommendations = slow_then_fast

    async def main() -> None:
        first = await harness.applier.begin([accepted("u1", "a", "e1")])
        second = await harness.applier.begin([accepted("u2", "b", "e2")])
        await asyncio.sleep(0.01)
        assert not second.done() and harness.entries("write") == []  # waits for the first
        first_acked.set()
        await asyncio.gather(first, second)

    asyncio.run(main())
    assert order == ["durable u2", "durable u1"]
    assert [entry[1] for entry in harness.log if entry[0] == "write"] == ["u1", "u2"]


def test_a_failed_send_fails_its_batch_and_every_later_one_before_any_write() -> None:
    harness = Harness(deltas_per_batch=0)

    async def failing(recommendations: list[tuple[bytes, bytes]]) -> list[Awaitable[Any]]:
        async def refused() -> None:
            raise ConnectionError("broker unreachable")

        return [asyncio.ensure_future(refused())] if recommendations[0][0] == b"u1" else []

    harness.applier.send_recommendations = failing

    async def main() -> list[Any]:
        first = await harness.applier.begin([accepted("u1", "a", "e1")])
        second = await harness.applier.begin([accepted("u2", "b", "e2")])
        return await asyncio.gather(first, second, return_exceptions=True)

    first, second = asyncio.run(main())
    assert isinstance(first, ConnectionError) and isinstance(second, RuntimeError)
    assert harness.entries("write") == []
    assert set(harness.users.in_flight) == {b"u1", b"u2"}


def test_a_duplicate_emits_nothing_and_writes_nothing() -> None:
    harness = Harness()
    harness.apply([accepted("u1", "a", "e1"), accepted("u1", "a", "e1")])
    assert [entry[1] for entry in harness.log if entry[0] == "send"].count("rec:u1") == 1
    log_after_first = list(harness.log)
    harness.apply([accepted("u1", "a", "e1", offset=1)])  # redelivered after its write
    assert harness.log == log_after_first
    assert harness.metrics.registry.get_sample_value("streamrec_duplicates_skipped_total") == 2


def test_each_applied_batch_is_counted_with_its_clicks() -> None:
    harness = Harness()
    harness.apply([accepted("u1", "a", "e1"), accepted("u2", "b", "e2")])
    harness.apply([accepted("u1", "c", "e3", T + 1), accepted("u1", "c", "e3", T + 1)])
    sample = harness.metrics.registry.get_sample_value
    # Duplicates are not applied, so the second batch counts one click.
    assert sample("streamrec_batch_clicks_count") == 2
    assert sample("streamrec_batch_clicks_sum") == 3


def test_a_send_that_cannot_be_queued_fails_every_later_batch_instead_of_stalling_it() -> None:
    harness = Harness(deltas_per_batch=0)
    sends = harness.applier.send_recommendations

    async def unqueueable(recommendations: list[tuple[bytes, bytes]]) -> list[Awaitable[Any]]:
        if recommendations[0][0] == b"u1":
            raise ConnectionError("broker unreachable")
        return await sends(recommendations)

    harness.applier.send_recommendations = unqueueable

    async def main() -> Any:
        with pytest.raises(ConnectionError):
            await harness.applier.begin([accepted("u1", "a", "e1")])
        later = await harness.applier.begin([accepted("u2", "b", "e2")])
        return await asyncio.wait_for(asyncio.gather(later, return_exceptions=True), 5)

    (outcome,) = asyncio.run(main())
    assert isinstance(outcome, RuntimeError)
    assert harness.entries("write") == []
