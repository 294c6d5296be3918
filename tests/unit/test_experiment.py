"""`streamrec experiment report` without Kafka: the event-id mapping against the worker's
own, the scoring rule (known answers, and equality with the live counters on the same
stream), and the bootstrap over users (known answers, A/A coverage, a planted
difference)."""

from __future__ import annotations

import argparse
import asyncio
import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest

from model.registry import build_recommender
from stream.events import Click
from stream.metrics import WorkerMetrics
from stream.offline.bootstrap import UserTotals, compare, estimate_arm, two_sided_p
from stream.offline.experiment import build_report, format_text, parse_time
from stream.offline.experiment_scoring import score_clicks
from stream.offline.experiment_topics import (
    Served,
    Unreadable,
    click_event_id,
    decode_served,
)
from stream.worker.acks import Taken
from stream.worker.agents import take_clicks
from stream.worker.pipeline import Accepted, ClickProcessor

T = 1_700_000_000.0
W = 128  # the worker's dedup window (STREAMREC_DEDUP_WINDOW)


def served(user: str, source: str, items: str, variant: str = "a", at: float = T) -> Served:
    """A recommendation event; `items` one letter per item, best first."""
    return Served(user, variant, tuple(items), source, at)


# --- which click a recommendation names -------------------------------------------


def test_click_event_id_is_the_clicks_own_id_or_its_record_position() -> None:
    assert click_event_id("e7", "clicks", 2, 17) == "e7"
    assert click_event_id(None, "clicks", 2, 17) == "clicks:2:17"


def test_the_worker_names_a_click_without_event_id_as_click_event_id_does() -> None:
    applied: list[Accepted] = []

    class Applier:
        async def begin(self, batch: list[Accepted]) -> asyncio.Future[None]:
            applied.extend(batch)
            finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            finished.set_result(None)
            return finished

    async def batches(stream: Any) -> Any:
        yield Taken(stream)

    message = SimpleNamespace(topic="clicks-x", partition=0, offset=41, timestamp=T)
    event = SimpleNamespace(message=message, key=b"u1", value=b'{"user_id":"u1","item_id":"i"}')
    ready = asyncio.Event()
    ready.set()
    asyncio.run(
        take_clicks(
            [event],
            batches=batches,
            ready=ready.wait,
            applier=Applier(),  # type: ignore[arg-type]
            dlq=None,
            by_user=None,
            metrics=WorkerMetrics(),
            partitions=1,  # partition 0 owns every user: applied here, not rerouted
            max_event_bytes=1 << 16,
        )
    )
    assert [a.event_id for a in applied] == [click_event_id(None, "clicks-x", 0, 41)]


def test_decode_served_reads_the_variant_or_none() -> None:
    event = {
        "user_id": "u",
        "items": [{"item_id": "x", "score": 1.0}],
        "model_version": "m",
        "source_event_id": "e",
        "event_time": T,
        "emitted_at": T,
    }
    assert decode_served(orjson.dumps(event)) == Served("u", "", ("x",), "e", T)
    with_variant = decode_served(orjson.dumps({**event, "variant": "torch"}))
    assert with_variant.variant == "torch"
    for broken in (b"", b"[]", orjson.dumps({**event, "items": [{"id": 1}]})):
        with pytest.raises(Unreadable):
            decode_served(broken)
    with pytest.raises(Unreadable):
        decode_served(orjson.dumps({**event, "variant": 3}))


# --- the scoring rule --------------------------------------------------------------


def test_score_clicks_known_answer() -> None:
    clicked = {("u1", f"e{n}"): item for n, item in enumerate("xbcqa")}
    clicked |= {("u2", "f0"): "z", ("u2", "f1"): "m"}
    events = [
        served("u1", "e0", "abc", "a"),  # first click: not scored
        served("u2", "f0", "mno", "b"),
        served("u1", "e1", "cba", "b"),  # b at 2nd of "abc" (arm a): rr 1/2
        served("u1", "e1", "cba", "b"),  # a repeat: not scored again
        served("u1", "e2", "", "a"),  # c at 1st of "cba" (arm b): rr 1
        served("u1", "e3", "q", "a"),  # after an empty list: not scored
        served("u1", "e9", "q", "a"),  # its click is not in the topic
        Unreadable("broken"),
        served("u2", "f1", "mno", "b"),  # m at 1st of "mno" (arm b): rr 1
    ]
    tally = score_clicks(events, clicked, dedup_window=W)
    assert tally.users == {"a": {"u1": [1, 1, 0.5]}, "b": {"u1": [1, 1, 1.0], "u2": [1, 1, 1.0]}}
    assert (tally.repeated, tally.unmatched, tally.unreadable) == (1, 1, 1)
    # With K=1 the first scored click misses: b is 2nd of "abc".
    assert score_clicks(events, clicked, dedup_window=W, k=1).users["a"] == {"u1": [1, 0, 0.0]}


def test_score_clicks_keeps_the_lists_shown_in_the_time_range() -> None:
    clicked = {("u", f"e{n}"): "a" for n in range(4)}
    events = [served("u", f"e{n}", "a", at=T + n) for n in range(4)]
    # Lists of T, T+1, T+2 are scored by the next click; [T+1, T+2) keeps one.
    assert score_clicks(events, clicked, dedup_window=W).users["a"]["u"] == [3, 3, 3.0]
    assert score_clicks(events, clicked, dedup_window=W, since=T + 1, until=T + 2).users["a"][
        "u"
    ] == [1, 1, 1.0]


def test_report_equals_the_live_counters_on_the_same_stream() -> None:
    """The worker's ClickProcessor scores a stream live; the report, fed the events it
    emitted and the clicks, must count the same predictions, hits and reciprocal ranks."""
    metrics = WorkerMetrics()
    processor = ClickProcessor(
        build_recommender("covisit"), None, metrics, top_k=5, exclude="none", dedup_window=8
    )
    rng = random.Random(3)
    clicks = [
        Click(f"u{rng.randrange(12)}", f"i{rng.randrange(15)}", T + n, event_id=f"e{n}")
        for n in range(600)
    ]
    clicks += rng.sample(clicks, 30)  # repeats the worker skips
    records: dict[bytes, Any] = {}
    values: list[bytes] = []
    for start in range(0, len(clicks), 37):
        batch = [Accepted(c, c.user_id.encode(), c.event_id or "", None) for c in clicks]
        outcome = processor.process_batch(batch[start : start + 37], records.get)
        records |= outcome.records
        values += outcome.values
    clicked = {(c.user_id, c.event_id or ""): c.item_id for c in clicks}
    tally = score_clicks(map(decode_served, values), clicked, dedup_window=8)
    # Repeats within the user's last 8 ids emitted nothing; those after it were applied,
    # emitted and scored again, live and here.
    sources = [decode_served(v).source_event_id for v in values]
    assert len(set(sources)) < len(sources) and tally.repeated == 0
    totals = np.sum([row for users in tally.users.values() for row in users.values()], axis=0)

    def live(name: str) -> float:
        return metrics.registry.get_sample_value(f"streamrec_online_{name}_total") or 0.0

    assert totals[0] == live("predictions") > 0
    assert totals[1] == live("hits") > 0
    assert totals[2] == pytest.approx(live("reciprocal_rank"))


# --- the bootstrap over users ------------------------------------------------------


def arm(clicks: list[int], hits: list[int], rr: list[float]) -> UserTotals:
    return UserTotals(np.array(clicks), np.array(hits), np.array(rr))


def test_ratio_estimates_known_answer() -> None:
    # Two users: 3 clicks with 2 hits (rr 1 + 1/2), 1 click missed: HR 2/4, MRR 1.5/4.
    estimate = estimate_arm(arm([3, 1], [2, 0], [1.5, 0.0]), 500, np.random.default_rng(0))
    assert (estimate.users, estimate.clicks) == (2, 4)
    assert estimate.hr.estimate == 0.5 and estimate.mrr.estimate == 0.375
    # Resampling two users gives (HR) 0 (both the second), 1/2 or 2/3 (both the first).
    assert set(np.round(estimate.hr_replicates, 6)) == {0.0, 0.5, round(2 / 3, 6)}
    assert estimate.hr.low == 0.0 and estimate.hr.high == pytest.approx(2 / 3)
    # Identical users leave nothing to vary: the interval is the estimate.
    same = estimate_arm(arm([2, 2], [1, 1], [0.5, 0.5]), 100, np.random.default_rng(0))
    assert (same.hr.low, same.hr.high) == (0.5, 0.5)


def test_two_sided_p_is_twice_the_smaller_tail_and_at_least_one_over_b() -> None:
    assert two_sided_p(np.array([-1.0, 1.0, 2.0, 3.0])) == 0.5
    assert two_sided_p(np.array([1.0, 2.0, 3.0, 4.0])) == 0.25  # 0 of 4 below: 1/B
    assert two_sided_p(np.array([0.0, 0.0])) == 1.0


def simulated_arm(rng: np.random.Generator, users: int, hit_rate: float) -> UserTotals:
    """Users with their own hit rates (Beta, mean `hit_rate`: strongly clustered clicks)
    and 1 + Poisson(6) clicks each; the population HR is `hit_rate`."""
    rates = rng.beta(2 * hit_rate / (1 - hit_rate), 2, size=users)
    clicks = 1 + rng.poisson(6, size=users)
    hits = rng.binomial(clicks, rates)
    return UserTotals(clicks, hits, hits * rng.uniform(0.2, 1.0, size=users))


def test_intervals_cover_the_truth_in_a_simulated_a_a_test() -> None:
    rng = np.random.default_rng(11)
    runs, covered_arm, covered_zero = 200, 0, 0
    for _ in range(runs):
        a = estimate_arm(simulated_arm(rng, 300, 0.3), 400, rng)
        b = estimate_arm(simulated_arm(rng, 300, 0.3), 400, rng)
        covered_arm += a.hr.low <= 0.3 <= a.hr.high
        diff = compare(b, a)
        covered_zero += diff.hr.low <= 0.0 <= diff.hr.high
    # 95% intervals: about 190 of 200 (a binomial 2.5-97.5% range is 184-196).
    assert 0.9 * runs <= covered_arm <= 0.99 * runs
    assert 0.9 * runs <= covered_zero <= 0.99 * runs


def test_a_planted_difference_is_detected_and_covered() -> None:
    rng = np.random.default_rng(5)
    a = estimate_arm(simulated_arm(rng, 3000, 0.30), 2000, rng)
    b = estimate_arm(simulated_arm(rng, 3000, 0.36), 2000, rng)
    diff = compare(b, a)
    assert diff.hr.low > 0 and diff.hr.low <= 0.06 <= diff.hr.high
    assert diff.hr_p == 1 / 2000


# --- the report --------------------------------------------------------------------


def test_build_report_orders_arms_and_names_the_baseline() -> None:
    clicked = {("u", f"e{n}"): "a" for n in range(4)} | {("v", "e0"): "a", ("v", "e1"): "b"}
    events = [
        served("v", "e0", "ab", "control", at=T),
        served("u", "e0", "a", "", at=T - 10),
        served("u", "e1", "a", "", at=T - 9),
        served("v", "e1", "ab", "control", at=T + 1),
    ]
    tally = score_clicks(events, clicked, dedup_window=W)
    report = build_report(tally, k=None, resamples=50)
    assert list(report["variants"]) == ["", "control"]  # the earliest scored list first
    assert report["variants"]["control"]["hr"] == 1.0
    assert report["variants"]["control"]["mrr"] == 0.5
    assert report["differences"]["control"]["against"] == ""
    assert report["differences"]["control"]["mrr_diff"] == -0.5
    flipped = build_report(tally, k=2, baseline="control", resamples=50)
    assert list(flipped["differences"]) == [""]
    assert "(none)" in format_text(flipped) and "HR@2" in format_text(flipped)
    with pytest.raises(ValueError, match="baseline treatment has no scored clicks"):
        build_report(tally, k=None, baseline="treatment")
    with pytest.raises(ValueError, match="no click could be scored"):
        build_report(score_clicks([], {}, dedup_window=W), k=None)


def test_parse_time_takes_epoch_seconds_and_iso_8601() -> None:
    assert parse_time("1700000000.5") == 1_700_000_000.5
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000.0
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000.0  # no zone: UTC
    assert parse_time("2023-11-15T00:13:20+02:00") == 1_700_000_000.0
    with pytest.raises(argparse.ArgumentTypeError):
        parse_time("yesterday")
