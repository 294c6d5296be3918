"""Many keyed records to one topic as one aiokafka batch per partition.

The worker sends a recommendation per click and a user record per user of each batch.
Sent one at a time, each record costs aiokafka a future and its callbacks, and a faust
`send_soon` adds its buffer, a FutureMessage and a buffer task on top: the largest part
of the worker's own cost per click when this was written (README, "Benchmarks").
aiokafka's public `create_batch`/`send_batch` put a partition's records in one record
batch with one future.

Records land where `producer.send(topic, value, key)` would put them: the default
partitioner's murmur2 of the key over the topic's partitions (`default_partition`).
They share the producer, and so the per-partition order, with faust's own sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from kafka.partitioner.default import murmur2

Records = Iterable[tuple[bytes, bytes | None]]


def default_partition(key: bytes, partitions: int) -> int:
    """The partition of `partitions` a record keyed by `key` lands on with the producer
    default (murmur2, as Faust/aiokafka, kafka-python and the Java client use)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def store_records(mapping: Any, records: dict[bytes, bytes | None]) -> None:
    """Put `records` into `mapping` in order; a None value deletes its key."""
    for key, value in records.items():
        if value is None:
            mapping.pop(key, None)
        else:
            mapping[key] = value


class KeyedBatchSender:
    """Sends (key, value) records to `topic`, each partition's in order as few record
    batches as the producer's batch size allows. `producer` returns the started
    aiokafka producer (it exists only once the app runs). A None value is a tombstone.
    Not thread-safe; call it from the producer's event loop."""

    def __init__(self, producer: Callable[[], AIOKafkaProducer], topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self._partitions: list[int] | None = None
        # Queueing can wait (for metadata, for room in the producer's buffer): a second
        # call must not queue its records ahead of the first's.
        self._queueing = asyncio.Lock()

    async def send(self, records: Records) -> list[asyncio.Future[Any]]:
        """Queue `records`, after those of every earlier call; returns one future per
        record batch, resolved once the broker has it (or failed with the send's
        error)."""
        async with self._queueing:
            return await self._queue(records)

    async def _queue(self, records: Records) -> list[asyncio.Future[Any]]:
        producer = self.producer()
        partitions = self._partitions
        if partitions is None:
            partitions = self._partitions = sorted(await producer.partitions_for(self.topic))
        count = len(partitions)
        by_partition: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for key, value in records:
            partition = partitions[default_partition(key, count)]
            by_partition.setdefault(partition, []).append((key, value))
        futures: list[asyncio.Future[Any]] = []
        for partition, pairs in by_partition.items():
            batch = producer.create_batch()
            for key, value in pairs:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    # Full: send what it holds and start the next (a first record
                    # always fits, whatever its size).
                    futures.append(await self._submit(producer, batch, partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            futures.append(await self._submit(producer, batch, partition))
        return futures

    async def _submit(self, producer: AIOKafkaProducer, batch: Any, partition: int) -> Any:
        # Closed, so that no `producer.send` from elsewhere joins it.
        batch.close()
        return await producer.send_batch(batch, self.topic, partition=partition)


class ChangelogBatchWriter:
    """Writes many keys of a faust table at once: into its store, and to its changelog
    through a `KeyedBatchSender`. What `table[key] = value` does per key (the store,
    then a changelog record on the key's partition, as the table's `use_partitioner`
    asks), without a `send_soon` per key. For tables of raw bytes keys and values."""

    def __init__(self, table: Any, producer: Callable[[], AIOKafkaProducer]) -> None:
        self.table = table
        self.sender = KeyedBatchSender(producer, table.changelog_topic.get_topic_name())

    async def __call__(self, records: dict[bytes, bytes | None]) -> None:
        """Store `records` (None deletes the key), then return once the changelog has
        them all (a tombstone for a deletion); raises the send's error if it failed."""
        store_records(self.table.data, records)
        await asyncio.gather(*await self.sender.send(records.items()))


__all__ = [
    "ChangelogBatchWriter",
    "KeyedBatchSender",
    "Records",
    "default_partition",
    "store_records",
]
