"""One accepted click's path, independent of Faust so it reads and tests top to bottom:

dedup by event id -> user context update and item representation update (the model)
-> vectors to Redis (the model already upserted them into its FAISS index) -> top-K
with the exclusion policy -> the recommendation event.

The Faust agents in `stream/app.py` feed it and persist the `UserRecord` it returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass

import orjson

from model.base import Interaction, Recommender, UserContext
from serving.redis_store import VectorStore
from stream.events import Click, Recommendation, RecommendedItem
from stream.metrics import WorkerMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UserRecord:
    """What the worker's user table holds per user: the model context and the ids of
    the user's most recent applied events (to skip repeats)."""

    context: UserContext
    event_ids: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        return orjson.dumps({"context": self.context.to_dict(), "event_ids": self.event_ids})

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserRecord:
        data = orjson.loads(raw)
        return cls(UserContext.from_dict(data["context"]), tuple(data["event_ids"]))


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one click: the user's next record and the event to emit, or
    `recommendation=None` and `duplicate=True` when the event was already applied."""

    record: UserRecord
    recommendation: Recommendation | None
    duplicate: bool = False


class ClickProcessor:
    """Applies accepted clicks to the model, the vector store and the index.

    Not thread-safe; the worker calls it from the agent's single task, one event at a
    time per partition, which is what keeps per-user updates ordered.
    """

    def __init__(
        self,
        recommender: Recommender,
        store: VectorStore | None,
        metrics: WorkerMetrics,
        *,
        top_k: int,
        exclude: str,
        dedup_window: int,
    ) -> None:
        self.recommender = recommender
        self.store = store
        self.metrics = metrics
        self.top_k = top_k
        self.exclude = exclude
        self.dedup_window = dedup_window
        self._vector_version = 0

    def new_record(self) -> UserRecord:
        return UserRecord(self.recommender.new_context())

    async def process(self, click: Click, record: UserRecord, event_id: str) -> Outcome:
        """Apply one click. Idempotent per `event_id` within the user's dedup window."""
        if event_id in record.event_ids:
            self.metrics.duplicates_skipped.inc()
            return Outcome(record, None, duplicate=True)

        stage = self.metrics.stage_seconds
        started = time.perf_counter()
        interaction = Interaction(
            user_id=click.user_id,
            item_id=click.item_id,
            timestamp=click.timestamp,
            event_type=click.event_type,
            session_id=click.session_id,
        )
        update = self.recommender.learn_one(record.context, interaction)
        after_model = time.perf_counter()
        stage.labels(stage="model_update").observe(after_model - started)

        await self._publish_vectors(click.user_id, update.item_vectors, update.user_vector)
        after_write = time.perf_counter()
        stage.labels(stage="vector_write").observe(after_write - after_model)

        items = self.recommender.recommend(
            update.context, self.top_k, exclude=self._excluded(update.context, click)
        )
        stage.labels(stage="search").observe(time.perf_counter() - after_write)

        event_ids = (*record.event_ids, event_id)[-self.dedup_window :]
        recommendation = Recommendation(
            user_id=click.user_id,
            items=tuple(RecommendedItem(s.item_id, s.score) for s in items),
            model_version=self.recommender.version,
            source_event_id=event_id,
            event_time=click.timestamp,
            emitted_at=time.time(),
        )
        return Outcome(UserRecord(update.context, event_ids), recommendation)

    def _excluded(self, context: UserContext, click: Click) -> Collection[str]:
        if self.exclude == "seen":
            return set(context.recent)
        if self.exclude == "last":
            return {click.item_id}
        return ()

    async def _publish_vectors(self, user_id: str, items, user_vector) -> None:  # type: ignore[no-untyped-def]
        if self.store is None or (not items and user_vector is None):
            return
        # Versions only need to grow within this writer; a nanosecond clock also keeps
        # them growing across restarts of the single writer of an item.
        self._vector_version = max(self._vector_version + 1, time.time_ns())
        try:
            await self.store.put_vectors(
                items=items,
                users={user_id: user_vector} if user_vector is not None else {},
                version=self._vector_version,
            )
        except Exception as exc:  # Redis is a rebuildable copy: count, log, keep serving.
            self.metrics.redis_errors.inc()
            log.warning("vector write to Redis failed: %s", exc)
