"""The worker's user table: each user's `UserRecord`, where it lives and when it leaves.

Each user's context lives in exactly one partition of the table: the partition a record
keyed by the user id lands on with the default partitioner (`owning_partition`). The
table itself is Faust's (every write goes to its changelog); `UserTable` adds the
records applied but not yet written (`in_flight`) and the retention policy
(stream/worker/retention.py) that bounds how many users a worker holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, MutableMapping
from typing import Any

from stream.kafka.batch_send import default_partition, store_records
from stream.metrics import WorkerMetrics
from stream.worker.records import UserRecord
from stream.worker.retention import UserRetention


def owning_partition(key: bytes, partitions: int) -> int:
    """The partition of `partitions` a record keyed by `key` lands on with the producer
    default (murmur2, as Faust/aiokafka, kafka-python and the Java client use): for a
    user id, where its state lives; for an item id, the partition whose owner writes
    its vector."""
    return default_partition(key, partitions)


# Stores many records at once (key -> value bytes; None deletes the key), in order
# with the calls before it; returns once they are durable.
WriteMany = Callable[[dict[bytes, bytes | None]], Awaitable[None]]


def write_each(table: MutableMapping[bytes, bytes]) -> WriteMany:
    """`WriteMany` by one `table[key] = value` (or `del`) per record: a faust table
    sends one changelog record per key."""

    async def write(records: dict[bytes, bytes | None]) -> None:
        store_records(table, records)

    return write


def assigned_partitions(app: Any, topic: str) -> set[int]:
    """The partitions of `topic` the app's consumer holds now (empty before it starts)."""
    return {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}


class UserTable:
    """User records by user id (bytes), over a changelogged table.

    `table` is the Faust table (a plain dict in tests); `owned_partitions` returns the
    user partitions this worker owns now: the table also holds standby copies of other
    workers' partitions, which their owners evict. Not thread-safe; the agents and
    timers call it from the worker's event loop.
    """

    def __init__(
        self,
        table: MutableMapping[bytes, bytes],
        retention: UserRetention,
        metrics: WorkerMetrics,
        *,
        partitions: int,
        owned_partitions: Callable[[], Collection[int]],
        on_evicted: Callable[[list[bytes]], None] = lambda keys: None,
        write_many: WriteMany | None = None,
    ) -> None:
        self.table = table
        # How `write_batch` stores a batch's records: the worker's batches them to
        # the changelog (stream/kafka/batch_send.py).
        self.write_many = write_many or write_each(table)
        self.on_evicted = on_evicted  # told the keys of the users each eviction deleted
        self.retention = retention
        self.metrics = metrics
        self.partitions = partitions
        self.owned_partitions = owned_partitions
        # Records applied but not yet written to the table: the other agent (a user's
        # clicks can arrive both in place and through the by-user topic) and the pull
        # API must see them while a batch waits for its deltas to be durable.
        self.in_flight: dict[bytes, UserRecord] = {}

    def __len__(self) -> int:
        return len(self.table)

    def current_record(self, user_key: bytes) -> UserRecord | None:
        """The user's newest record, in flight or written; None for an unknown user."""
        record = self.in_flight.get(user_key)
        if record is not None:
            return record
        raw = self.table.get(user_key)
        return UserRecord.from_bytes(raw) if raw else None

    def hold(self, user_key: bytes, record: UserRecord) -> None:
        """`record` is the user's newest, applied but not yet written (`write_batch`)."""
        self.in_flight[user_key] = record

    async def write_batch(self, records: Mapping[bytes, UserRecord]) -> None:
        """Write every record of a batch, and take each out of flight unless a later
        batch's record of its user replaced it meanwhile (that batch writes it next).
        The caller writes batches in the order they were applied (BatchApplier), so a
        user's last write is its newest record. Returns once the writes are durable;
        raises if one failed."""
        if not records:
            return
        await self.write_many({user_key: record.to_bytes() for user_key, record in records.items()})
        in_flight = self.in_flight
        for user_key, record in records.items():
            if in_flight.get(user_key) is record:
                del in_flight[user_key]
            self.retention.touch(user_key, record.context.last_timestamp)

    async def evict_users(self) -> None:
        """Delete from the table the users `retention` says are due: each deletion
        writes a changelog tombstone, so a restarted worker does not bring them back.
        Only users of partitions this worker owns; never one with a record in flight."""
        owned = self.owned_partitions()
        evicted: list[bytes] = []
        for eviction in self.retention.due(self._owned_by(owned), self.in_flight):
            if eviction.key in self.table:
                evicted.append(eviction.key)
            self.metrics.users_evicted.labels(reason=eviction.reason).inc()
        if evicted:
            await self.write_many(dict.fromkeys(evicted))
            self.metrics.users_in_state.set(len(self.table))
            self.on_evicted(evicted)

    def adopt_recovered_users(self) -> None:
        """Track the users a (re)start recovered from the changelog, oldest last click
        first, so the cap and the idle rule cover them too. Idempotent: users already
        tracked are left as they are."""
        owned_by = self._owned_by(self.owned_partitions())
        found = [
            (UserRecord.last_timestamp_of(raw), key)
            for key, raw in self.table.items()
            if raw and key not in self.retention and owned_by(key)
        ]
        for event_time, key in sorted(found):
            self.retention.adopt(key, event_time)

    def _owned_by(self, owned: Collection[int]) -> Callable[[bytes], bool]:
        return lambda key: owning_partition(key, self.partitions) in owned


__all__ = ["UserTable", "WriteMany", "assigned_partitions", "owning_partition", "write_each"]
