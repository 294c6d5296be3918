"""This worker's part in the item-vector protocol (stream/items/ tells the whole story).

As a *user's* worker it sends the deltas its clicks made (`send_deltas`); as the *owner*
of some item-delta partitions it applies their deltas once each, writes Redis and
broadcasts the new vectors (`own_deltas`); as *every* worker it follows the broadcast
vectors into its model and index (`take_canonical`, fed by `follower`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable
from typing import Any

import numpy as np

from model.base import ItemVectorModel
from serving.faiss_index import FaissIndex
from serving.redis_store import RedisVectorStore
from stream.items.ledger import (
    CanonicalVector,
    DeltaTracker,
    ItemDelta,
    ItemLedger,
    same_model,
)
from stream.items.sync import VectorFollower, decode_deltas, encode_deltas, encode_vectors
from stream.metrics import WorkerMetrics
from stream.security import KafkaSecurity
from stream.settings import Settings
from stream.worker.publisher import VectorPublisher
from stream.worker.users import owning_partition

log = logging.getLogger(__name__)


async def write_all_items(
    store: RedisVectorStore,
    index: FaissIndex,
    ledger: ItemLedger,
    chunk: int = 2000,
    version: int | None = None,
) -> int:
    """Write every item vector in `index` to Redis in chunks, each with its canonical
    version (0 for one only a checkpoint gave), or `version` for all: stale writes are
    refused by Redis."""
    written = 0
    ids = index.ids()
    for start in range(0, len(ids), chunk):
        batch = ids[start : start + chunk]
        versions = {}
        for item_id in batch:
            entry = ledger.get(item_id)
            versions[item_id] = entry.version if entry is not None else 0
            if version is not None:
                versions[item_id] = version
        written += await store.put_vectors(
            items={i: index.vector(i) for i in batch},
            users={},
            version=0,
            item_versions=versions,
        )
        await asyncio.sleep(0)  # let clicks through between chunks
    return written


class ItemOwner:
    """The item ledger, the delta tracker and the vector follower of one worker.

    `tracker` holds the deltas this worker's clicks made (the ClickProcessor records
    them). `deltas_topic` and `vectors_topic` are the item-deltas and item-vectors topics
    (anything with faust's `send_soon`/`send`). `vector_model` is None for models
    without item vectors (the baselines): they never make deltas, and Redis holds no
    item vectors to rebuild. Not thread-safe; everything but the follower's consumer
    runs on the worker's event loop, and the follower calls `take_canonical` there too.
    """

    def __init__(
        self,
        settings: Settings,
        security: KafkaSecurity,
        *,
        index: FaissIndex,
        vector_model: ItemVectorModel | None,
        tracker: DeltaTracker,
        publisher: VectorPublisher,
        store: RedisVectorStore,
        metrics: WorkerMetrics,
        deltas_topic: Any,
        vectors_topic: Any,
        model_version: str = "",
    ) -> None:
        self.partitions = settings.partitions
        self.index = index
        self.vector_model = vector_model
        self.publisher = publisher
        self.store = store
        self.metrics = metrics
        self.deltas_topic = deltas_topic
        self.vectors_topic = vectors_topic
        self.tracker = tracker
        self.ledger = ItemLedger(model=model_version)
        self.unsynced: set[int] = set()  # item-delta partitions owned but not caught up on
        self.follower = VectorFollower(
            settings.bootstrap_servers,
            settings.item_vectors_topic,
            settings.partitions,
            self.take_canonical,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            security=security,
        )

    @property
    def caught_up(self) -> asyncio.Event:
        """Set once the follower has read every broadcast vector there was at start:
        until then the index lacks the live item vectors, so clicks wait for it."""
        return self.follower.caught_up

    def take_canonical(self, entries: list[CanonicalVector]) -> None:
        """A record of the item owners' vectors: keep them, and copy into the model and
        the index each one that already includes this worker's own changes."""
        ids, vectors = [], []
        for entry in entries:
            self.ledger.observe(entry)
            current = self.ledger.get(entry.item_id)
            if (
                current is not None
                and current.version == entry.version
                and same_model(entry.model, self.ledger.model)
                and (self.tracker.may_overwrite(entry))
            ):
                ids.append(entry.item_id)
                vectors.append(entry.vector)
        if ids and self.vector_model is not None:
            self.vector_model.set_item_vectors(ids, np.stack(vectors))
            self.index.upsert(ids, np.stack(vectors))
            self.metrics.index_items.set(len(self.index))

    def swap(self, vector_model: ItemVectorModel | None, index: FaissIndex, version: str) -> None:
        """A live model swap (stream/worker/swap.py): follow `vector_model` and `index`
        from now on, and take only deltas and broadcasts of model `version`."""
        self.vector_model = vector_model
        self.index = index
        self.ledger.model = version
        self.metrics.index_items.set(len(index))

    async def write_swapped_items(self) -> int:
        """After a swap: every item vector of the new model to Redis, at a version past
        every earlier one (the old model's vectors are of another space)."""
        if self.vector_model is None:
            return 0
        version = int(time.time() * 1_000_000)
        return await write_all_items(self.store, self.index, self.ledger, version=version)

    def send_deltas(self) -> list[Awaitable[Any]]:
        """Queue every pending item-vector delta to its item's owner, one record per
        owning partition; returns the futures that resolve once the broker has them.
        Does not block; drains the tracker, so a second call sends nothing new."""
        by_partition: dict[int, list[ItemDelta]] = {}
        for delta in self.tracker.drain():
            partition = owning_partition(delta.item_id.encode(), self.partitions)
            by_partition.setdefault(partition, []).append(delta)
        return [
            self.deltas_topic.send_soon(value=encode_deltas(group), partition=partition)
            for partition, group in sorted(by_partition.items())
        ]

    def took_over(self, partitions: Iterable[int]) -> None:
        """These item-delta partitions are (again) this worker's: before it applies
        their next delta it catches up on what their previous owner broadcast."""
        self.unsynced.update(partitions)

    async def own_deltas(self, partition: int, value: bytes | None) -> None:
        """Apply one item-delta record of an owned `partition`: each delta once (the
        ledger skips replays by source offset), then queue the new vectors for Redis
        and broadcast them. An unreadable record is logged and dropped."""
        if partition in self.unsynced:
            # Newly owned: first read every vector the previous owner broadcast, so
            # its last changes are the base for ours (and its applied offsets stop
            # replayed deltas).
            await self.follower.sync({partition})
            self.unsynced.discard(partition)
        try:
            deltas = decode_deltas(value or b"")
        except ValueError as exc:  # only our own workers write here
            log.error("unreadable item-delta record dropped: %s", exc)
            return
        applied = [entry for d in deltas if (entry := self.ledger.apply(d)) is not None]
        if not applied:
            return
        self.publisher.submit_items(
            {e.item_id: e.vector for e in applied},
            {e.item_id: e.version for e in applied},
            {e.item_id: e.clicked_at for e in applied if e.clicked_at is not None},
        )
        # One record per item, keyed by its id: the topic is compacted (a broker refuses
        # a record without a key there), and compaction keeps each key's last record,
        # so a record must hold that item alone (stream/kafka/topics.py).
        for entry in applied:
            await self.vectors_topic.send(
                key=entry.item_id.encode(), value=encode_vectors([entry]), partition=partition
            )

    def canonical_version(self, item_id: str) -> int | None:
        """The version of the last canonical vector heard for `item_id` in the serving
        model's space, or None (none heard since the model started or swapped in)."""
        entry = self.ledger.get(item_id)
        if entry is None or not same_model(entry.model, self.ledger.model):
            return None
        return entry.version

    async def follow_item_vectors(self) -> None:
        """Follow the item-vectors topic until the worker stops (a Faust task)."""
        await self.follower.run()

    async def write_items(self) -> int:
        """Write every item vector this worker holds to Redis, compare-and-set by
        canonical version, so an emptied Redis is whole again and a newer vector is
        kept; returns how many were written (0 for models without item vectors).
        Raises what Redis raises (stream/worker/redis_health.py calls it)."""
        if self.vector_model is None:
            return 0
        return await write_all_items(self.store, self.index, self.ledger)


__all__ = ["ItemOwner", "write_all_items"]
