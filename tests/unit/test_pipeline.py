"""ClickProcessor's policies for valid clicks that are repeats or arrive late."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import orjson
import pytest

from model.base import Interaction, Scored, Update, UserContext, waves
from model.baselines import CoVisitation
from model.registry import build_recommender
from stream.events import Click, Recommendation, RecommendedItem
from stream.metrics import WorkerMetrics
from stream.worker.pipeline import Accepted, ClickProcessor, UserRecord

T = 1_700_000_000.0


class Recording(CoVisitation):
    """CoVisitation that keeps every interaction it learned from."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[Interaction] = []

    def learn_one(self, context: UserContext, interaction: Interaction) -> Update:
        self.seen.append(interaction)
        return super().learn_one(context, interaction)


def processor() -> tuple[ClickProcessor, Recording, WorkerMetrics]:
    model, metrics = Recording(), WorkerMetrics()
    return (
        ClickProcessor(model, None, metrics, top_k=5, exclude="seen", dedup_window=8),
        model,
        metrics,
    )


def run(proc: ClickProcessor, clicks: list[Click]) -> tuple[UserRecord, list[Any]]:
    record, outcomes = proc.new_record(), []
    for click in clicks:
        outcome = proc.process(click, record, click.event_id or "")
        record = outcome.record
        outcomes.append(outcome)
    return record, outcomes


def sample(metrics: WorkerMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def test_a_late_click_is_applied_counted_and_seen_with_a_zero_gap() -> None:
    proc, model, metrics = processor()
    clicks = [
        Click("u1", "a", T, event_id="e1"),
        Click("u1", "b", T + 60, event_id="e2"),
        Click("u1", "c", T - 3600, event_id="e3"),  # an hour before the user's last click
        Click("u1", "d", T + 120, event_id="e4"),
    ]
    record, outcomes = run(proc, clicks)
    # Applied in arrival order: every click learned from and recommended for.
    assert [o.recommendation.source_event_id for o in outcomes] == ["e1", "e2", "e3", "e4"]
    assert record.context.recent == ("a", "b", "c", "d")
    assert sample(metrics, "streamrec_events_out_of_order_total") == 1
    # The model saw the user's last time for the late click (gap 0, not -3660 s) ...
    assert [i.timestamp for i in model.seen] == [T, T + 60, T + 60, T + 120]
    # ... while the recommendation names the click's own event time.
    assert outcomes[2].recommendation.event_time == T - 3600
    assert record.context.last_timestamp == T + 120


def test_clicks_in_order_or_at_the_same_time_are_not_out_of_order() -> None:
    proc, _, metrics = processor()
    run(
        proc,
        [
            Click("u1", "a", T, event_id="e1"),
            Click("u1", "b", T, event_id="e2"),
            Click("u1", "c", T + 1, event_id="e3"),
        ],
    )
    assert sample(metrics, "streamrec_events_out_of_order_total") == 0


def test_a_first_click_from_any_time_is_in_order() -> None:
    proc, _, metrics = processor()
    run(proc, [Click("u1", "a", 700_000_000.0, event_id="e1")])
    assert sample(metrics, "streamrec_events_out_of_order_total") == 0


def test_a_repeated_event_id_is_skipped_not_counted_as_out_of_order() -> None:
    proc, model, metrics = processor()
    first = Click("u1", "a", T + 60, event_id="e1")
    _, outcomes = run(proc, [first, Click("u1", "b", T + 120, event_id="e2"), first])
    assert outcomes[2].duplicate and outcomes[2].recommendation is None
    assert len(model.seen) == 2
    assert sample(metrics, "streamrec_duplicates_skipped_total") == 1
    assert sample(metrics, "streamrec_events_out_of_order_total") == 0


def test_last_timestamp_is_read_without_decoding_the_record() -> None:
    # Ids may hold anything JSON can: quotes and the field's own name must not fool it.
    tricky = '"last_timestamp":5,}'
    record = UserRecord(UserContext((tricky, "b"), (0.5,), 2, 1234.5), (tricky,), (tricky,), 2)
    raw = record.to_bytes()
    assert UserRecord.last_timestamp_of(raw) == 1234.5
    assert UserRecord.from_bytes(raw).context.last_timestamp == 1234.5
    assert UserRecord.last_timestamp_of(UserRecord(UserContext()).to_bytes()) == 0.0


# --- The batch path against the per-click path it replaced -----------------------------


def reference_process(
    proc: ClickProcessor, click: Click, record: UserRecord, event_id: str
) -> tuple[UserRecord, Recommendation | None]:
    """The per-click path as it was before batches went through the processor as
    batches (quality and metrics left out): the answer the batch path must give."""
    if event_id in record.event_ids:
        return record, None
    timestamp = max(click.timestamp, record.context.last_timestamp)
    interaction = Interaction(
        click.user_id, click.item_id, timestamp, click.event_type, click.session_id
    )
    update = proc.recommender.learn_one(record.context, interaction)
    history = record.history
    if proc.exclude == "history":
        kept = [item for item in history if item != click.item_id] + [click.item_id]
        history = tuple(
            kept[len(kept) - proc.history_max :] if len(kept) > proc.history_max else kept
        )
    excluded = {
        "seen": set(update.context.recent),
        "last": {click.item_id},
        "history": set(history),
    }[proc.exclude]
    items = proc.recommender.recommend(update.context, proc.top_k, exclude=excluded)
    recommendation = Recommendation(
        user_id=click.user_id,
        items=tuple(RecommendedItem(s.item_id, s.score) for s in items),
        model_version=proc.recommender.version,
        source_event_id=event_id,
        event_time=click.timestamp,
        emitted_at=0.0,
    )
    event_ids = (*record.event_ids, event_id)[-proc.dedup_window :]
    shown = tuple(s.item_id for s in items)
    after = UserRecord(update.context, event_ids, shown, record.applied + 1, history)
    return after, recommendation


def generated_stream(n: int, seed: int) -> list[Accepted]:
    """Clicks of a few users (so a batch holds several clicks of one user), some late,
    and about one in eight a repeat of an earlier event of the same user."""
    rng = random.Random(seed)
    accepted: list[Accepted] = []
    for i in range(n):
        if accepted and rng.random() < 0.125:
            accepted.append(rng.choice(accepted[-40:]))
            continue
        user = f"u{rng.randrange(6)}"
        at = T + i * 10 - (3600 if rng.random() < 0.1 else 0)
        click = Click(user, f"i{rng.randrange(30)}", at, event_id=f"e{i}")
        accepted.append(Accepted(click, user.encode(), f"e{i}", at, "c0", i))
    return accepted


def without_emitted_at(value: bytes) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(value)
    del data["emitted_at"]
    return data


@pytest.mark.parametrize("model", ["popularity", "covisit", "torch"])
@pytest.mark.parametrize("exclude", ["seen", "last", "history"])
def test_batches_give_what_one_click_at_a_time_gave(model: str, exclude: str) -> None:
    stream = generated_stream(300, seed=3)
    kwargs: dict[str, Any] = {"top_k": 5, "exclude": exclude, "dedup_window": 4, "history_max": 12}
    one = ClickProcessor(build_recommender(model, dim=8), None, WorkerMetrics(), **kwargs)
    batched = ClickProcessor(build_recommender(model, dim=8), None, WorkerMetrics(), **kwargs)

    expected_records: dict[bytes, UserRecord] = {}
    expected_values = []
    for accepted in stream:
        record = expected_records.get(accepted.user_key) or one.new_record()
        after, recommendation = reference_process(one, accepted.click, record, accepted.event_id)
        expected_records[accepted.user_key] = after
        if recommendation is not None:
            expected_values.append(without_emitted_at(recommendation.to_json()))

    records: dict[bytes, UserRecord] = {}
    values = []
    rng = random.Random(5)
    start = 0
    while start < len(stream):
        size = rng.choice([1, 2, 7, 64])
        outcome = batched.process_batch(stream[start : start + size], records.get)
        start += size
        # What the worker does: the newest records go through the table's bytes.
        records.update({k: UserRecord.from_bytes(r.to_bytes()) for k, r in outcome.records.items()})
        values.extend(without_emitted_at(v) for v in outcome.values)

    assert len(values) < len(stream)  # the stream has repeats to skip
    assert values == expected_values
    assert records == expected_records


def test_history_never_shows_a_user_an_item_they_interacted_with() -> None:
    """Under `history`, a recommendation leaves out every item its user clicked (up to
    `history_max`, the oldest forgotten first) and still holds top_k items; the pull
    answer too. Popularity would otherwise show the most clicked, i.e. the user's."""
    proc = ClickProcessor(
        build_recommender("popularity"),
        None,
        WorkerMetrics(),
        top_k=5,
        exclude="history",
        dedup_window=4,
        history_max=20,
    )
    rng = random.Random(7)
    clicked: dict[str, list[str]] = {}
    known: set[str] = set()  # popularity knows only the items clicked so far
    records: dict[bytes, UserRecord] = {}
    for start in range(0, 400, 16):
        batch = []
        for i in range(start, start + 16):
            user, item = f"u{rng.randrange(4)}", f"i{rng.randrange(60)}"
            batch.append(
                Accepted(Click(user, item, T + i, event_id=f"e{i}"), user.encode(), f"e{i}", None)
            )
        outcome = proc.process_batch(batch, records.get)
        records.update(outcome.records)
        for accepted, items in zip(outcome.applied, outcome.ranked, strict=True):
            user = accepted.click.user_id
            mine = clicked.setdefault(user, [])
            if accepted.click.item_id in mine:
                mine.remove(accepted.click.item_id)
            mine.append(accepted.click.item_id)
            known.add(accepted.click.item_id)
            shown = {s.item_id for s in items}
            assert len(items) == min(5, len(known - set(mine[-20:])))
            assert not shown & set(mine[-20:])
    for user, mine in clicked.items():
        record = records[user.encode()]
        assert record.history == tuple(mine[-20:])
        answer = proc.answer(user, record, 5)
        assert len(answer.items) == 5 and not {i.item_id for i in answer.items} & set(mine[-20:])
    # What a user's record costs under the policy, with 20 three- to four-character ids.
    assert len(record.to_bytes()) - len(dataclasses.replace(record, history=()).to_bytes()) < 20 * 8


class Batched(CoVisitation):
    """CoVisitation with the batch API of the model port, recording its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def learn_many(
        self, contexts: Mapping[str, UserContext], interactions: Sequence[Interaction]
    ) -> list[Update]:
        self.calls.append(("learn_many", len(interactions)))
        current = dict(contexts)
        updates = []
        for interaction in interactions:
            update = self.learn_one(current[interaction.user_id], interaction)
            current[interaction.user_id] = update.context
            updates.append(update)
        return updates

    def recommend_many(
        self, contexts: Sequence[UserContext], k: int, excludes: Sequence[Collection[str]]
    ) -> list[list[Scored]]:
        self.calls.append(("recommend_many", len(contexts)))
        return [self.recommend(c, k, exclude=e) for c, e in zip(contexts, excludes, strict=True)]


def test_the_batch_model_step_calls_the_model_once_per_wave() -> None:
    model = Batched()
    proc = ClickProcessor(
        model, None, WorkerMetrics(), top_k=5, exclude="seen", dedup_window=8, batched=True
    )
    stream = generated_stream(50, seed=1)
    applied = len({(a.user_key, a.event_id) for a in stream})
    outcome = proc.process_batch(stream, lambda _key: None)
    # Wave w holds each user's w-th click: a learn_many and a recommend_many per wave.
    clicks = [Interaction(a.click.user_id, "i", 0.0) for a in outcome.applied]
    sizes = [len(wave) for wave in waves(clicks)]
    assert model.calls == [
        call for size in sizes for call in (("learn_many", size), ("recommend_many", size))
    ]
    assert sum(sizes) == applied and len(sizes) > 1
    assert len(outcome.values) == len(outcome.applied) == applied


def test_a_batched_recommendation_never_reflects_the_users_own_later_clicks() -> None:
    # The live hit rate scores a user's next click against the previous list, so that
    # list must not have learned from the next click. One user's clicks in one batch
    # are ranked exactly as one click at a time ranks them (covisit is exact per wave).
    stream = [
        Accepted(Click("u1", item, T + n, event_id=f"e{n}"), b"u1", f"e{n}", T + n, "c0", n)
        for n, item in enumerate("abacbd")
    ]
    ranked = []
    for batched in (False, True):
        proc = ClickProcessor(
            build_recommender("covisit"),
            None,
            WorkerMetrics(),
            top_k=5,
            exclude="none",
            dedup_window=8,
            batched=batched,
        )
        ranked.append(proc.process_batch(stream, lambda _key: None).ranked)
    assert ranked[0] == ranked[1]


def test_the_click_model_step_never_calls_the_batch_methods() -> None:
    model = Batched()
    proc = ClickProcessor(model, None, WorkerMetrics(), top_k=5, exclude="seen", dedup_window=8)
    proc.process_batch(generated_stream(50, seed=1), lambda _key: None)
    assert model.calls == []


def test_batch_metrics_count_events_not_batches() -> None:
    proc, _, metrics = processor()
    stream = generated_stream(100, seed=2)
    outcome = proc.process_batch(stream, lambda _key: None)
    applied = len(outcome.applied)
    assert sample(metrics, "streamrec_model_updates_total") == applied
    assert sample(metrics, "streamrec_duplicates_skipped_total") == len(stream) - applied
    for stage in ("model_update", "search"):
        count = metrics.registry.get_sample_value("streamrec_stage_seconds_count", {"stage": stage})
        assert count == applied, stage
