"""ClickProcessor's policies for valid clicks that are repeats or arrive late."""

from __future__ import annotations

from typing import Any

from model.base import Interaction, Update, UserContext
from model.baselines import CoVisitation
from stream.events import Click
from stream.metrics import WorkerMetrics
from stream.worker.pipeline import ClickProcessor, UserRecord

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
