"""The catalogue (the items topic) in a worker: availability, content and cold start.

    items --[every worker: TopicFollower, all partitions, from the start]-->
              Catalogue.take: availability (Unavailable) and content (the model)
          --[catalogue agent, one worker per partition: take_catalogue]-->
              items.dlq (bad records, with the reason)
              a new item's content vector, as an item delta to the item's owner
              (stream/items/), which writes Redis and broadcasts it to every index

Every worker reads the whole catalogue, because every worker serves every item: an
item marked `available: false` leaves each worker's lists once its follower reads the
record, and clicks wait until the catalogue is read at start. The content vector of a
new item has one writer like any item vector: the agent that reads the record computes
it with its model and sends it as a delta with no `before` (an item the owner has never
seen takes it as it is; one it has, from clicks elsewhere, keeps its vector), tagged
with the record's partition and offset, so a replayed record is applied once. So an
item is in every worker's index and in Redis before its first click, within the same
freshness bound as a click's change. Items the model already knows are not sent: their
vectors are learned from clicks, and the model keeps their content for what it learns.

The model's content mapping keeps learning (from clicks on items with content), so an
item started early, perhaps from a mapping that had learned nothing yet, would keep an
outdated vector until its first click. Every `REFRESH_S` the agent's worker sends the
current content vector again for each item it started that no click has reached yet
(no click source in its canonical vector's applied offsets), as a delta from the
vector the owner broadcast: the owner takes it as it is unless a click changed the
item meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from model.base import Recommender
from model.content import ContentAware, ItemContent
from model.variants import Variants
from stream.catalogue import CatalogueItem, decode_item
from stream.events import Rejected, dead_letter
from stream.metrics import WorkerMetrics
from stream.worker.agents import Batches
from stream.worker.item_owner import ItemOwner
from stream.worker.pipeline import ClickProcessor

log = logging.getLogger(__name__)

# Seconds between refreshes of never-clicked items' content vectors, and the most items
# one refresh sends (a bounded pause of the event loop).
REFRESH_S = 30.0
REFRESH_MAX_ITEMS = 5000
# Item-delta sources of catalogue records (`i` + partition) and refreshes (`r` +
# partition); clicks' are `c` and `u` (stream/worker/agents.py).
CONTENT_SOURCES = ("i", "r")


def content_models(recommender: Recommender) -> list[ContentAware]:
    """The models in `recommender` that take content (each arm of an experiment)."""
    models: Iterable[object] = (
        [arm.model for arm in recommender.arms]
        if isinstance(recommender, Variants)
        else [recommender]
    )
    return [model for model in models if isinstance(model, ContentAware)]


class Catalogue:
    """What this worker knows of the catalogue: which items are unavailable (the click
    processor's `unavailable`, which every served list respects) and each item's
    content, given to the serving model (and again to a model swapped in).
    Not thread-safe: the worker's event loop calls it."""

    def __init__(
        self,
        processor: ClickProcessor,
        items: ItemOwner,
        metrics: WorkerMetrics,
        *,
        max_event_bytes: int,
        embedding_dim: int,
    ) -> None:
        self.processor = processor
        self.items = items
        self.metrics = metrics
        self.max_event_bytes = max_event_bytes
        self.embedding_dim = embedding_dim
        self.contents: dict[str, ItemContent] = {}
        # Items this worker started from content, by the catalogue partition they came
        # from, until a click reaches them.
        self.started: dict[str, int] = {}
        self._refreshes = 0

    def decode(self, value: bytes | None) -> CatalogueItem | Rejected:
        return decode_item(value, max_bytes=self.max_event_bytes, embedding_dim=self.embedding_dim)

    def take(self, item: CatalogueItem) -> bool:
        """One catalogue record: its availability, and its content if it has any
        (returned: whether it had). The follower and the agent both take a record (the
        agent may read it first, and its cold start needs the content); taking it
        twice changes nothing."""
        unavailable = self.processor.unavailable
        unavailable.mark(item.item_id, item.available)
        self.metrics.items_unavailable.set(len(unavailable))
        content = item.content()
        if content.is_empty():
            return False
        self.contents[item.item_id] = content
        for model in content_models(self.processor.recommender):
            model.set_content({item.item_id: content})
        return True

    def take_record(self, _key: bytes | None, value: bytes | None) -> None:
        """The follower's callback. A bad record is skipped here: the catalogue agent
        that reads its partition dead-letters it, once."""
        item = self.decode(value)
        if not isinstance(item, Rejected):
            self.take(item)

    def feed(self, recommender: Recommender) -> None:
        """Give a model swapped in every content known."""
        if self.contents:
            for model in content_models(recommender):
                model.set_content(self.contents)

    def start_cold(self, records: list[tuple[CatalogueItem, int, int]]) -> int:
        """Queue, as item deltas (sent by `ItemOwner.send_deltas`), the content vector
        of each item in `records` (item, partition, offset) that has content and that
        the model serving item vectors does not know; returns how many."""
        model = self.items.vector_model
        if not isinstance(model, ContentAware) or not records:
            return 0
        fresh = {item.item_id: (p, o) for item, p, o in records if not _knows(model, item.item_id)}
        vectors = model.content_vectors(list(fresh))
        for item_id, vector in vectors.items():
            partition, offset = fresh[item_id]
            self.started[item_id] = partition
            self.items.tracker.record(
                item_id,
                None,
                vector,
                source=f"i{partition}",
                offset=offset,
                model=self.processor.vector_version,
            )
        self.metrics.items_cold_started.inc(len(vectors))
        return len(vectors)

    def refresh(self) -> int:
        """Queue, as item deltas, the current content vector of each item this worker
        started that no click has reached and whose vector the mapping has moved
        (at most `REFRESH_MAX_ITEMS`); returns how many."""
        model = self.items.vector_model
        if not isinstance(model, ContentAware) or not self.started:
            return 0
        ledger, cold = self.items.ledger, {}
        for item_id, partition in list(self.started.items()):
            entry = ledger.get(item_id)
            if entry is None:
                continue  # not broadcast yet
            if not all(source.startswith(CONTENT_SOURCES) for source in entry.applied):
                del self.started[item_id]  # clicked: its vector is learned now
                continue
            cold[item_id] = (partition, entry.vector)
            if len(cold) >= REFRESH_MAX_ITEMS:
                break
        self._refreshes += 1
        # Past every earlier refresh's, across restarts: a millisecond clock.
        offset = max(int(time.time() * 1000), self._refreshes)
        sent = 0
        for item_id, vector in model.content_vectors(list(cold)).items():
            partition, current = cold[item_id]
            if np.allclose(vector, current, rtol=1e-3, atol=1e-6):
                continue
            self.items.tracker.record(
                item_id,
                current,
                vector,
                source=f"r{partition}",
                offset=offset,
                model=self.processor.vector_version,
            )
            sent += 1
        self.metrics.items_content_refreshed.inc(sent)
        return sent

    async def refresh_now(self) -> None:
        """`refresh`, and send what it queued (an app timer)."""
        if self.refresh():
            await asyncio.gather(*self.items.send_deltas())


def _knows(model: object, item_id: str) -> bool:
    try:
        model.item_vector(item_id)  # type: ignore[attr-defined]
    except KeyError:
        return False
    return True


async def take_catalogue(
    stream: Any,
    *,
    batches: Batches,
    ready: Any,
    catalogue: Catalogue,
    dlq: Any,
) -> None:
    """Registered as the "catalogue" agent on the items topic: dead-letters a bad
    record with its reason; sends each new item's content vector to its owner and
    waits until the broker has it before the batch is acknowledged."""
    await ready()
    metrics = catalogue.metrics
    async for taken in batches(stream):
        events = taken.events
        metrics.items_consumed.inc(len(events))
        fresh: list[tuple[CatalogueItem, int, int]] = []
        for event in events:
            item = catalogue.decode(event.value)
            if isinstance(item, Rejected):
                metrics.items_rejected.labels(reason=item.reason).inc()
                value, headers = dead_letter(event.value, item, max_bytes=catalogue.max_event_bytes)
                await dlq.send(key=event.key, value=value, headers=headers)
                continue
            if catalogue.take(item):
                fresh.append((item, event.message.partition, event.message.offset))
        if catalogue.start_cold(fresh):
            await asyncio.gather(*catalogue.items.send_deltas())


__all__ = ["Catalogue", "content_models", "take_catalogue"]
