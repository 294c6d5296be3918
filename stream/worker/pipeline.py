"""A batch of accepted clicks' path, independent of Faust so it reads and tests top to
bottom:

dedup by event id -> user context update and item representation update (the model,
which also upserts the changed item vectors into its FAISS index) -> the item changes to
their owners (`DeltaTracker`) and the user vectors queued for Redis (`VectorPublisher`,
flushed off this path) -> top-K with the exclusion policy, never an unavailable item ->
the recommendation events.

The model gets one `learn_many` and one `recommend_many` call per wave of the batch
(each user's w-th click in wave w; the default, STREAMREC_MODEL_STEP=batch), or runs
one click at a time, learn then rank
(STREAMREC_MODEL_STEP=click); metrics are observed once per batch. The Faust agents in
`stream/worker/agents.py` feed it and persist the `UserRecord`s it returns.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from model.base import (
    Interaction,
    Recommender,
    Scored,
    Update,
    UserContext,
    excluded,
    remembered,
    waves,
)
from model.variants import Variants
from stream.events import Click, Recommendation, RecommendedItem, encode_recommendation
from stream.items.ledger import DeltaTracker
from stream.metrics import WorkerMetrics, observe_many, observe_values
from stream.worker.availability import Unavailable
from stream.worker.publisher import VectorPublisher
from stream.worker.quality import OnlineQuality
from stream.worker.records import UserRecord


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid click to apply, with where it was read (its deltas' idempotence key).
    `clicked_at` (the click's record timestamp) starts the latency and freshness
    measurements; None skips them."""

    click: Click
    user_key: bytes
    event_id: str
    clicked_at: float | None
    source: str = ""
    offset: int = -1


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one click: the user's next record and the event to emit, or
    `recommendation=None` and `duplicate=True` when the event was already applied."""

    record: UserRecord
    recommendation: Recommendation | None
    duplicate: bool = False


@dataclass(slots=True)
class BatchOutcome:
    """What a batch produced. `applied` are the clicks applied, in order (repeats of an
    applied event id left out); `values[i]` is the encoded recommendation event of
    `applied[i]` and `ranked[i]` its items; `records` maps the key of each user with an
    applied click to the user's newest record, which includes all of them."""

    applied: list[Accepted] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    ranked: list[list[Scored]] = field(default_factory=list)
    records: dict[bytes, UserRecord] = field(default_factory=dict)
    emitted_at: float = 0.0
    #: Under an A/B experiment, the variant that served `applied[i]`; else empty.
    variants: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Learned:
    """The model's answers for a batch and the time each half took."""

    updates: list[Update]
    ranked: list[list[Scored]]
    model_seconds: float
    search_seconds: float


def _learn_and_rank(
    recommender: Recommender,
    contexts: Mapping[str, UserContext],
    interactions: Sequence[Interaction],
    k: int,
    exclude_of: Callable[[int, UserContext, Interaction], Collection[str]],
    batched: bool,
    unavailable: Unavailable,
) -> _Learned:
    """Learn from `interactions` and rank for each. `batched`: wave by wave (each
    user's w-th click of the batch in wave w), one `learn_many` and one
    `recommend_many` call per wave, so a click's recommendation never reflects the
    user's own later clicks of the batch (the live hit rate scores the next click
    against it); it does reflect other users' clicks of the wave. Otherwise one click
    at a time, learn then rank, exactly as single clicks are. `exclude_of(i, context,
    interaction)` is what click i's ranking leaves out, `context` being the user's
    after it; no list holds an `unavailable` item."""
    started = time.perf_counter()
    if batched:
        current = dict(contexts)
        by_position: dict[int, tuple[Update, list[Scored]]] = {}
        learning = 0.0
        for wave in waves(interactions):
            clicks = [interactions[p] for p in wave]
            learn_started = time.perf_counter()
            done = recommender.learn_many({c.user_id: current[c.user_id] for c in clicks}, clicks)
            learning += time.perf_counter() - learn_started
            excludes = [
                exclude_of(p, update.context, click)
                for p, update, click in zip(wave, done, clicks, strict=True)
            ]
            lists = unavailable.recommend_many(recommender, [u.context for u in done], k, excludes)
            for p, click, update, items in zip(wave, clicks, done, lists, strict=True):
                current[click.user_id] = update.context
                by_position[p] = (update, items)
        ordered = [by_position[p] for p in range(len(interactions))]
        return _Learned(
            [u for u, _ in ordered],
            [r for _, r in ordered],
            learning,
            time.perf_counter() - started - learning,
        )
    current = dict(contexts)
    updates, ranked = [], []
    searching = 0.0
    for n, interaction in enumerate(interactions):
        update = recommender.learn_one(current[interaction.user_id], interaction)
        current[interaction.user_id] = update.context
        updates.append(update)
        learned = time.perf_counter()
        ranked.append(
            unavailable.recommend(
                recommender, update.context, k, exclude_of(n, update.context, interaction)
            )
        )
        searching += time.perf_counter() - learned
    return _Learned(updates, ranked, time.perf_counter() - started - searching, searching)


class ClickProcessor:
    """Applies accepted clicks to the model, the vector store and the index.

    `tracker` receives each click's `Update.item_changes` as deltas for the items'
    owners (stream/items/ledger.py); without one they are dropped, which only a single
    process without Redis item vectors (tests, the in-process benchmark) can afford.
    `publisher` receives the user vectors. Not thread-safe; the worker calls it from
    its event loop, one batch at a time, and a batch holds each partition's clicks in
    order, which is what keeps per-user updates ordered.
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
        batched: bool = False,
        tracker: DeltaTracker | None = None,
        history_max: int = 1000,
    ) -> None:
        self.recommender = recommender
        self.tracker = tracker
        self.publisher = publisher
        self.metrics = metrics
        self.top_k = top_k
        self.exclude = exclude  # seen, last, none or history (stream/settings.py)
        self.history_max = history_max
        self.dedup_window = dedup_window
        self.batched = batched  # one model call per batch (STREAMREC_MODEL_STEP=batch)
        # Kept current by the catalogue (stream/worker/catalogue.py).
        self.unavailable = Unavailable()
        self.quality = OnlineQuality(metrics)
        # An A/B experiment (STREAMREC_VARIANTS): each click's list is served, tagged and
        # scored by the user's variant.
        self.experiment = recommender if isinstance(recommender, Variants) else None
        self.variant_quality: dict[str, OnlineQuality] = {}
        if self.experiment is not None:
            for arm in self.experiment.arms:
                self.variant_quality[arm.name] = OnlineQuality(
                    metrics, variant=arm.name, catalogue=self.quality.catalogue
                )
                metrics.variant_recommendations.labels(variant=arm.name)
                metrics.variant_latency.labels(variant=arm.name)
        self._loss_average: float | None = None

    def swap(self, recommender: Recommender) -> None:
        """Serve `recommender` from the next batch on (a live swap; one model, not an
        experiment: stream/worker/swap.py)."""
        self.recommender = recommender
        self.experiment = None

    @property
    def vector_version(self) -> str:
        """The version of the model whose item vectors the click path changes (an
        experiment's primary arm): the space the item deltas are in."""
        if self.experiment is not None:
            return self.experiment.arms[self.experiment.primary].model.version
        return self.recommender.version

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
        """Apply one click to the user's `record`: `process_batch` with a batch of one
        (tests and the in-process benchmark use it). `recommendation` is None and
        `duplicate` True when `event_id` was already applied."""
        accepted = Accepted(click, click.user_id.encode(), event_id, clicked_at, source, offset)
        outcome = self.process_batch([accepted], lambda _key: record)
        if not outcome.applied:
            return Outcome(record, None, duplicate=True)
        recommendation = Recommendation(
            user_id=click.user_id,
            items=tuple(RecommendedItem(s.item_id, s.score) for s in outcome.ranked[0]),
            model_version=self.recommender.version,
            source_event_id=event_id,
            event_time=click.timestamp,
            emitted_at=outcome.emitted_at,
        )
        if self.experiment is not None:
            arm = self.experiment.served(outcome.records[accepted.user_key].context)
            recommendation = dataclasses.replace(
                recommendation, model_version=arm.model.version, variant=arm.name
            )
        return Outcome(outcome.records[accepted.user_key], recommendation)

    def process_batch(
        self, batch: Sequence[Accepted], record_of: Callable[[bytes], UserRecord | None]
    ) -> BatchOutcome:
        """Apply `batch` in order. `record_of(user_key)` is the user's record before the
        batch (None: a new user); it is asked once per user. Idempotent per event id
        within each user's dedup window, a later click of the batch included. A click
        older than its user's last one is applied with a zero time gap and counted
        (`streamrec_events_out_of_order_total`). `source` and `offset` tag each click's
        item-vector deltas (stream/items/ledger.py)."""
        before: dict[bytes, UserRecord] = {}
        event_ids: dict[bytes, tuple[str, ...]] = {}
        last_time: dict[bytes, float] = {}
        applied: list[Accepted] = []
        interactions: list[Interaction] = []
        duplicates = late = 0
        for accepted in batch:
            key, click = accepted.user_key, accepted.click
            ids = event_ids.get(key)
            if ids is None:
                record = before[key] = record_of(key) or self.new_record()
                ids = event_ids[key] = record.event_ids
                last_time[key] = record.context.last_timestamp
            if accepted.event_id in ids:
                duplicates += 1
                continue
            event_ids[key] = (*ids, accepted.event_id)[-self.dedup_window :]
            # Out of order (older than the user's last applied event): applied in
            # arrival order all the same, since it happened and dropping it would lose
            # it; the model sees the user's last time, so a time gap is never negative.
            # The user's last time after it is the later of the two, as the model's
            # context keeps it (`OnlineRecommender.advance`).
            timestamp = click.timestamp
            if timestamp < last_time[key]:
                late += 1
                timestamp = last_time[key]
            last_time[key] = timestamp
            applied.append(accepted)
            interactions.append(
                Interaction(
                    click.user_id, click.item_id, timestamp, click.event_type, click.session_id
                )
            )
        if duplicates:
            self.metrics.duplicates_skipped.inc(duplicates)
        if late:
            self.metrics.events_out_of_order.inc(late)
        if not applied:
            return BatchOutcome()
        contexts = {a.click.user_id: before[a.user_key].context for a in applied}
        return self._apply(applied, interactions, contexts, before, event_ids)

    def _apply(
        self,
        applied: list[Accepted],
        interactions: list[Interaction],
        contexts: dict[str, UserContext],
        before: dict[bytes, UserRecord],
        event_ids: dict[bytes, tuple[str, ...]],
    ) -> BatchOutcome:
        """Learn, forward the item changes and user vectors, rank, and build the events
        and each user's newest record: the deduplicated part of `process_batch`."""
        n = len(applied)
        stage = self.metrics.stage_seconds
        histories: dict[bytes, tuple[str, ...]] = {}
        after = self._histories(applied, before, histories) if self.exclude == "history" else []

        def exclude_of(i: int, context: UserContext, _click: Interaction) -> Collection[str]:
            return excluded(self.exclude, context, after[i] if after else ())

        learned = _learn_and_rank(
            self.recommender,
            contexts,
            interactions,
            self.top_k,
            exclude_of,
            batched=self.batched,
            unavailable=self.unavailable,
        )
        updates, ranked = learned.updates, learned.ranked
        # model_update includes the model's own index upserts of the vectors it changed.
        observe_many(stage.labels(stage="model_update"), learned.model_seconds / n, n)
        observe_many(stage.labels(stage="search"), learned.search_seconds / n, n)
        self._forward(applied, updates)

        version, variant = self.recommender.version, None
        outcome = BatchOutcome(applied=applied, ranked=ranked, emitted_at=time.time())
        shown_by_user = {key: record.last_recommended for key, record in before.items()}
        scored: list[tuple[Sequence[str], str]] = []
        shown_all: list[tuple[str, ...]] = []
        applied_by_user: dict[bytes, int] = {}
        newest: dict[bytes, Update] = {}
        for accepted, update, items in zip(applied, updates, ranked, strict=True):
            click, key = accepted.click, accepted.user_key
            scored.append((shown_by_user[key], click.item_id))
            shown = shown_by_user[key] = tuple(s.item_id for s in items)
            shown_all.append(shown)
            applied_by_user[key] = applied_by_user.get(key, 0) + 1
            newest[key] = update
            if self.experiment is not None:
                arm = self.experiment.served(update.context)
                version, variant = arm.model.version, arm.name
                outcome.variants.append(variant)
            outcome.values.append(
                encode_recommendation(
                    click.user_id,
                    items,
                    version,
                    accepted.event_id,
                    click.timestamp,
                    outcome.emitted_at,
                    variant,
                )
            )
        self.quality.score_clicks(scored)
        self.quality.record_shown_many(shown_all)
        if outcome.variants:
            self._score_variants(outcome.variants, scored, shown_all)
        outcome.records = {
            key: UserRecord(
                update.context,
                event_ids[key],
                shown_by_user[key],
                before[key].applied + applied_by_user[key],
                histories.get(key, ()),
            )
            for key, update in newest.items()
        }
        return outcome

    def _score_variants(
        self,
        variants: list[str],
        scored: list[tuple[Sequence[str], str]],
        shown: list[tuple[str, ...]],
    ) -> None:
        """Each variant's share of the batch's live quality: a click is scored under the
        variant of its user (who saw that variant's previous list: the split is by user)."""
        for name, quality in self.variant_quality.items():
            mine = [i for i, variant in enumerate(variants) if variant == name]
            if mine:
                quality.score_clicks(scored[i] for i in mine)
                quality.record_shown_many(shown[i] for i in mine)
                self.metrics.variant_recommendations.labels(variant=name).inc(len(mine))

    def _histories(
        self,
        applied: list[Accepted],
        before: dict[bytes, UserRecord],
        newest: dict[bytes, tuple[str, ...]],
    ) -> list[frozenset[str]]:
        """Each applied click's user history after it (the `history` policy's
        exclusions); `newest` receives each user's history after the batch."""
        after: list[frozenset[str]] = []
        for accepted in applied:
            key = accepted.user_key
            history = newest.get(key, before[key].history)
            newest[key] = history = remembered(history, accepted.click.item_id, self.history_max)
            after.append(frozenset(history))
        return after

    def _forward(self, applied: list[Accepted], updates: list[Update]) -> None:
        """The item changes to their owners, the user vectors to the publisher, the
        loss to its gauge and the index's freshness to its histogram."""
        metrics = self.metrics
        metrics.model_updates.inc(len(updates))
        space = self.vector_version
        now = time.time()
        fresh: list[float] = []
        loss_seen = False
        for accepted, update in zip(applied, updates, strict=True):
            if update.loss is not None:
                loss_seen = True
                self._loss_average = (
                    update.loss
                    if self._loss_average is None
                    else 0.99 * self._loss_average + 0.01 * update.loss
                )
            if update.item_changes:
                if accepted.clicked_at is not None:
                    fresh.append(max(0.0, now - accepted.clicked_at))
                if self.tracker is not None:
                    # Item vectors have one writer each, the item's owner: it gets the
                    # deltas and writes Redis (stream/items/sync.py). This worker writes
                    # the user's.
                    for item_id, change in update.item_changes.items():
                        self.tracker.record(
                            item_id,
                            change.before,
                            change.after,
                            source=accepted.source,
                            offset=accepted.offset,
                            clicked_at=accepted.clicked_at,
                            model=space,
                        )
            if self.publisher is not None and update.user_vector is not None:
                self.publisher.submit_user(accepted.click.user_id, update.user_vector)
        if loss_seen and self._loss_average is not None:
            metrics.model_loss.set(self._loss_average)
        observe_values(metrics.vector_freshness.labels(store="index"), fresh)

    def answer(self, user_id: str, record: UserRecord | None, k: int) -> Recommendation:
        """The recommendation `user_id` would get now, without learning anything: the
        pull API's answer. An unknown user (`record` None) gets the cold-start list.
        `source_event_id` is the user's last applied event, or "" for an unknown user."""
        record = record or self.new_record()
        context = record.context
        leave_out = excluded(self.exclude, context, frozenset(record.history))
        version, variant = self.recommender.version, None
        if self.experiment is not None:
            context = self.experiment.enter(user_id, context)
            arm = self.experiment.served(context)
            version, variant = arm.model.version, arm.name
        items = self.unavailable.recommend(self.recommender, context, k, leave_out)
        return Recommendation(
            user_id=user_id,
            items=tuple(RecommendedItem(s.item_id, s.score) for s in items),
            model_version=version,
            source_event_id=record.event_ids[-1] if record.event_ids else "",
            event_time=context.last_timestamp,
            emitted_at=time.time(),
            variant=variant,
        )
