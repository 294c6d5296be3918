"""One accepted click's path, independent of Faust so it reads and tests top to bottom:

dedup by event id -> user context update and item representation update (the model,
which also upserts the changed item vectors into its FAISS index) -> the item changes to
their owners (`DeltaTracker`) and the user vector queued for Redis (`VectorPublisher`,
flushed off this path) -> top-K with the exclusion policy -> the recommendation event.

The Faust agents in `stream/worker/app.py` feed it and persist the `UserRecord` it returns.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

import orjson

from model.base import Interaction, Recommender, UserContext
from stream.events import Click, Recommendation, RecommendedItem
from stream.items.ledger import DeltaTracker
from stream.metrics import WorkerMetrics
from stream.worker.publisher import VectorPublisher
from stream.worker.quality import OnlineQuality


@dataclass(frozen=True, slots=True)
class UserRecord:
    """What the worker's user table holds per user: the model context, the ids of the
    user's most recent applied events (to skip repeats) and the items last recommended
    (to score the next click for live quality)."""

    context: UserContext
    event_ids: tuple[str, ...] = ()
    last_recommended: tuple[str, ...] = ()
    applied: int = 0  # clicks applied to this user, ever: what a fault test counts

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "context": self.context.to_dict(),
                "event_ids": self.event_ids,
                "last_recommended": self.last_recommended,
                "applied": self.applied,
            }
        )

    @classmethod
    def last_timestamp_of(cls, raw: bytes) -> float:
        """`from_bytes(raw).context.last_timestamp`, read without decoding the record
        (about 1 us instead of 50-90 us for a torch user): a worker reads it for every
        user it recovers. Falls back to a full decode when the field is not found."""
        start = raw.rfind(b'"last_timestamp":')
        if start >= 0:
            start += len(b'"last_timestamp":')
            end = min(i for i in (raw.find(b",", start), raw.find(b"}", start)) if i >= 0)
            try:
                return float(raw[start:end])
            except ValueError:
                pass
        return cls.from_bytes(raw).context.last_timestamp

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserRecord:
        data = orjson.loads(raw)
        return cls(
            UserContext.from_dict(data["context"]),
            tuple(data["event_ids"]),
            tuple(data.get("last_recommended", ())),
            int(data.get("applied", 0)),
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

    `tracker` receives each click's `Update.item_changes` as deltas for the items'
    owners (stream/items/ledger.py); without one they are dropped, which only a single
    process without Redis item vectors (tests, the in-process benchmark) can afford.
    `publisher` receives the user vectors. Not thread-safe; the worker calls it from
    the agent's single task, one event at a time per partition, which is what keeps
    per-user updates ordered.
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
        tracker: DeltaTracker | None = None,
    ) -> None:
        self.recommender = recommender
        self.tracker = tracker
        self.publisher = publisher
        self.metrics = metrics
        self.top_k = top_k
        self.exclude = exclude
        self.dedup_window = dedup_window
        self.quality = OnlineQuality(metrics)
        self._loss_average: float | None = None

    def new_record(self) -> UserRecord:
        return UserRecord(self.recommender.new_context())

    def process(
        self,
        click: Click,
        record: UserRecord,
        event_id: str,
        clicked_at: float | None = None,
        *,
        source: str = "",
        offset: int = -1,
    ) -> Outcome:
        """Apply one click. Idempotent per `event_id` within the user's dedup window.
        A click older than the user's last one is applied with a zero time gap and
        counted (`streamrec_events_out_of_order_total`).

        `clicked_at` (the click's record timestamp) is the start of the vector
        freshness measurements; None skips them. `source` and `offset` say where the
        click was read; they tag its item-vector deltas (stream/items/ledger.py).
        """
        if event_id in record.event_ids:
            self.metrics.duplicates_skipped.inc()
            return Outcome(record, None, duplicate=True)

        # Out of order (older than the user's last applied event): applied in arrival
        # order all the same, since it happened and dropping it would lose it; the model
        # sees the user's last time, so a time gap is never negative.
        timestamp = click.timestamp
        if timestamp < record.context.last_timestamp:
            self.metrics.events_out_of_order.inc()
            timestamp = record.context.last_timestamp

        self.quality.score_click(record.last_recommended, click.item_id)
        stage = self.metrics.stage_seconds
        started = time.perf_counter()
        interaction = Interaction(
            user_id=click.user_id,
            item_id=click.item_id,
            timestamp=timestamp,
            event_type=click.event_type,
            session_id=click.session_id,
        )
        update = self.recommender.learn_one(record.context, interaction)
        after_model = time.perf_counter()
        self.metrics.model_updates.inc()
        if update.loss is not None:
            self._loss_average = (
                update.loss
                if self._loss_average is None
                else 0.99 * self._loss_average + 0.01 * update.loss
            )
            self.metrics.model_loss.set(self._loss_average)
        # model_update includes the model's own index upserts of the vectors it changed.
        stage.labels(stage="model_update").observe(after_model - started)
        if clicked_at is not None and update.item_changes:
            self.metrics.vector_freshness.labels(store="index").observe(
                max(0.0, time.time() - clicked_at)
            )
        if self.tracker is not None:
            # Item vectors have one writer each, the item's owner: it gets the deltas
            # and writes Redis (stream/items/sync.py). This worker writes the user's.
            for item_id, change in update.item_changes.items():
                self.tracker.record(
                    item_id,
                    change.before,
                    change.after,
                    source=source,
                    offset=offset,
                    clicked_at=clicked_at,
                )
        if self.publisher is not None and update.user_vector is not None:
            self.publisher.submit({}, click.user_id, update.user_vector)

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
        return Outcome(
            UserRecord(update.context, event_ids, shown, record.applied + 1), recommendation
        )

    def answer(self, user_id: str, record: UserRecord | None, k: int) -> Recommendation:
        """The recommendation `user_id` would get now, without learning anything: the
        pull API's answer. An unknown user (`record` None) gets the cold-start list.
        `source_event_id` is the user's last applied event, or "" for an unknown user."""
        record = record or self.new_record()
        context = record.context
        last = context.recent[-1:] if context.recent else ()
        if self.exclude == "seen":
            excluded: Collection[str] = set(context.recent)
        else:
            excluded = set(last) if self.exclude == "last" else ()
        items = self.recommender.recommend(context, k, exclude=excluded)
        return Recommendation(
            user_id=user_id,
            items=tuple(RecommendedItem(s.item_id, s.score) for s in items),
            model_version=self.recommender.version,
            source_event_id=record.event_ids[-1] if record.event_ids else "",
            event_time=context.last_timestamp,
            emitted_at=time.time(),
        )

    def _excluded(self, context: UserContext, click: Click) -> Collection[str]:
        if self.exclude == "seen":
            return set(context.recent)
        if self.exclude == "last":
            return {click.item_id}
        return ()
