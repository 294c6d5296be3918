"""One accepted click's path, independent of Faust so it reads and tests top to bottom:

dedup by event id -> user context update and item representation update (the model,
which also upserts the changed item vectors into its FAISS index) -> vectors queued for
Redis (`VectorPublisher`, flushed off this path) -> top-K with the exclusion policy ->
the recommendation event.

The Faust agents in `stream/app.py` feed it and persist the `UserRecord` it returns.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

import orjson

from model.base import Interaction, Recommender, UserContext
from stream.events import Click, Recommendation, RecommendedItem
from stream.metrics import WorkerMetrics
from stream.publisher import VectorPublisher
from stream.quality import OnlineQuality

@dataclass(frozen=True, slots=True)
class UserRecord:
    """What the worker's user table holds per user: the model context, the ids of the
    user's most recent applied events (to skip repeats) and the items last recommended
    (to score the next click for live quality)."""

    context: UserContext
    event_ids: tuple[str, ...] = ()
    last_recommended: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "context": self.context.to_dict(),
                "event_ids": self.event_ids,
                "last_recommended": self.last_recommended,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserRecord:
        data = orjson.loads(raw)
        return cls(
            UserContext.from_dict(data["context"]),
            tuple(data["event_ids"]),
            tuple(data.get("last_recommended", ())),
        )


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
        publisher: VectorPublisher | None,
        metrics: WorkerMetrics,
        *,
        top_k: int,
        exclude: str,
        dedup_window: int,
    ) -> None:
        self.recommender = recommender
        self.publisher = publisher
        self.metrics = metrics
        self.top_k = top_k
        self.exclude = exclude
        self.dedup_window = dedup_window
        self.quality = OnlineQuality(metrics)

    def new_record(self) -> UserRecord:
        return UserRecord(self.recommender.new_context())

    def process(self, click: Click, record: UserRecord, event_id: str) -> Outcome:
        """Apply one click. Idempotent per `event_id` within the user's dedup window."""
        if event_id in record.event_ids:
            self.metrics.duplicates_skipped.inc()
            return Outcome(record, None, duplicate=True)

        self.quality.score_click(record.last_recommended, click.item_id)
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
        if self.publisher is not None:
            self.publisher.submit(update.item_vectors, click.user_id, update.user_vector)
        after_model = time.perf_counter()
        stage.labels(stage="model_update").observe(after_model - started)

        items = self.recommender.recommend(
            update.context, self.top_k, exclude=self._excluded(update.context, click)
        )
        stage.labels(stage="search").observe(time.perf_counter() - after_model)

        event_ids = (*record.event_ids, event_id)[-self.dedup_window :]
        recommendation = Recommendation(
            user_id=click.user_id,
            items=tuple(RecommendedItem(s.item_id, s.score) for s in items),
            model_version=self.recommender.version,
            source_event_id=event_id,
            event_time=click.timestamp,
            emitted_at=time.time(),
        )
        shown = tuple(s.item_id for s in items)
        self.quality.record_shown(shown)
        return Outcome(UserRecord(update.context, event_ids, shown), recommendation)

    def _excluded(self, context: UserContext, click: Click) -> Collection[str]:
        if self.exclude == "seen":
            return set(context.recent)
        if self.exclude == "last":
            return {click.item_id}
        return ()
