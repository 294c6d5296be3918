"""`streamrec experiment report` against the embedded broker: hand-written clicks and
recommendation events (with `variant`) in, the figures of a hand computation out; and
on a live worker's topics, the figures of its own live counters."""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

import orjson
import pytest

from stream.dev.generate import synthetic_clicks
from stream.dev.harness import scrape_metric, wait_for
from stream.dev.services import DevStack
from stream.kafka.producer import make_producer, replay
from stream.kafka.topics import ensure_topics
from tests.integration.test_cli import streamrec

pytestmark = pytest.mark.integration

T = 1_700_000_000.0

# user -> their clicks in order: (event id or None for "named by its record", item).
CLICKS: dict[str, list[tuple[str | None, str]]] = {
    "u1": [("u1-1", "a"), (None, "b"), ("u1-3", "z")],
    "u2": [("u2-1", "a"), ("u2-2", "q")],
    "u3": [("u3-1", "a"), ("u3-2", "c")],
    "u4": [("u4-1", "a"), ("u4-2", "b")],
    "u5": [("u5-1", "a"), ("u5-2", "m")],
}
# user -> (variant or None for no field, first event time, the list after each click).
LISTS: dict[str, tuple[str | None, float, list[str]]] = {
    "u1": ("torch", T, ["bcd", "xz", "a"]),  # b 1st: rr 1; z 2nd: rr 1/2
    "u2": ("torch", T + 10, ["ab", "ab"]),  # q missed
    "u3": ("covisit", T + 100, ["bc", "c"]),  # c 2nd: rr 1/2; its event is sent twice
    "u4": ("covisit", T + 110, ["b", ""]),  # b 1st: rr 1
    "u5": (None, T + 200, ["m", "m"]),  # m 1st: rr 1
}


@pytest.fixture(scope="module")
def topics(dev_stack: DevStack) -> dict[str, str]:
    """Clicks and recommendation events written as a worker with variants would."""
    tag = uuid.uuid4().hex[:8]
    clicks, recommendations = f"clicks-{tag}", f"recommendations-{tag}"
    ensure_topics(dev_stack.bootstrap_servers, [clicks, recommendations], partitions=2)
    producer = make_producer(dev_stack.bootstrap_servers)
    try:
        events: list[tuple[bytes, bytes]] = []
        for user, user_clicks in CLICKS.items():
            variant, start, lists = LISTS[user]
            for n, ((event_id, item), shown) in enumerate(zip(user_clicks, lists, strict=True)):
                payload: dict[str, Any] = {"user_id": user, "item_id": item, "timestamp": start + n}
                if event_id:
                    payload["event_id"] = event_id
                sent = producer.send(clicks, key=user.encode(), value=orjson.dumps(payload))
                where = sent.get(timeout=10)
                source = event_id or f"{where.topic}:{where.partition}:{where.offset}"
                event = _recommendation(user, shown, source, start + n, variant)
                events.append((user.encode(), event))
                if user == "u3" and n == 1:
                    events.append((user.encode(), event))  # a repeat counts once
        for key, value in events:  # sent together: batches, as a worker writes them
            producer.send(recommendations, key=key, value=value)
        producer.flush()
    finally:
        producer.close(timeout=5)
    return {"clicks": clicks, "recommendations": recommendations}


def _recommendation(
    user: str, items: str, source: str, event_time: float, variant: str | None
) -> bytes:
    event: dict[str, Any] = {
        "user_id": user,
        "items": [{"item_id": i, "score": 1.0 / (r + 1)} for r, i in enumerate(items)],
        "model_version": "test",
        "source_event_id": source,
        "event_time": event_time,
        "emitted_at": event_time + 0.01,
    }
    if variant is not None:
        event["variant"] = variant
    return orjson.dumps(event)


def report(dev_stack: DevStack, topics: dict[str, str], *flags: str) -> Any:
    done = streamrec(
        "experiment",
        "report",
        "--bootstrap-servers",
        dev_stack.bootstrap_servers,
        "--clicks-topic",
        topics["clicks"],
        "--recommendations-topic",
        topics["recommendations"],
        "--resamples",
        "200",
        *flags,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout) if "--json" in flags else done.stdout


def test_report_matches_the_hand_computation(dev_stack: DevStack, topics: dict[str, str]) -> None:
    result = report(dev_stack, topics, "--json")
    variants = result["variants"]
    assert list(variants) == ["torch", "covisit", ""]  # the earliest scored arm first
    torch, covisit, none = variants["torch"], variants["covisit"], variants[""]
    assert (torch["users"], torch["clicks_scored"]) == (2, 3)
    assert torch["hr"] == pytest.approx(2 / 3) and torch["mrr"] == pytest.approx(1.5 / 3)
    assert (covisit["users"], covisit["clicks_scored"]) == (2, 2)
    assert covisit["hr"] == 1.0 and covisit["mrr"] == pytest.approx(0.75)
    assert (none["users"], none["clicks_scored"], none["hr"]) == (1, 1, 1.0)
    assert torch["hr_ci"][0] <= torch["hr"] <= torch["hr_ci"][1]
    diff = result["differences"]["covisit"]
    assert diff["against"] == "torch"
    assert diff["hr_diff"] == pytest.approx(1 / 3) and diff["mrr_diff"] == pytest.approx(0.25)
    assert 1 / 200 <= diff["hr_p"] <= 1
    assert result["left_out"] == {
        "repeated_events": 1,
        "clicks_not_found": 0,
        "unreadable_events": 0,
    }
    assert result["k"] is None and "bootstrap over users, B=200" in result["test"]


def test_k_since_and_baseline_flags(dev_stack: DevStack, topics: dict[str, str]) -> None:
    since = "2023-11-14T22:13:25Z"  # T + 5: drops u1's lists, keeps u2's and the rest
    result = report(dev_stack, topics, "--json", "--k", "1", "--since", since, "--baseline", "")
    assert list(result["variants"]) == ["", "torch", "covisit"]
    torch, covisit = result["variants"]["torch"], result["variants"]["covisit"]
    assert (torch["users"], torch["clicks_scored"], torch["hr"]) == (1, 1, 0.0)
    # At K=1 u3's c (2nd of "bc") misses; u4's b is a hit.
    assert (covisit["clicks_scored"], covisit["hr"], covisit["mrr"]) == (2, 0.5, 0.5)
    assert set(result["differences"]) == {"torch", "covisit"}


def test_text_output_has_the_arms_and_the_differences(
    dev_stack: DevStack, topics: dict[str, str]
) -> None:
    text = report(dev_stack, topics)
    print(text, file=sys.stderr)  # shown by -rA: the table as a user sees it
    assert "(none)" in text and "difference against torch (the baseline)" in text
    assert "repeated events 1" in text


def test_report_equals_a_live_workers_counters(worker_factory: Any) -> None:
    """A fresh worker scores a stream live; the report on its topics must count the same.
    The clicks carry no event_id, so every source_event_id is a record position."""
    worker = worker_factory(model="covisit")
    settings = worker.settings
    events = [
        {k: v for k, v in e.items() if k != "event_id"} | {"timestamp": time.time()}
        for e in synthetic_clicks(300, users=15, items=25, seed=4)
    ]
    replay(
        events,
        bootstrap_servers=settings.bootstrap_servers,
        topic=settings.clicks_topic,
        progress=False,
    )
    url = worker.metrics_url

    def live(name: str) -> float:
        return scrape_metric(url, f"streamrec_{name}_total") or 0.0

    wait_for(lambda: int(live("recommendations_emitted")), len(events), 30, progress=False)
    assert live("recommendations_emitted") == len(events)
    done = streamrec(
        "experiment",
        "report",
        "--json",
        "--bootstrap-servers",
        settings.bootstrap_servers,
        "--clicks-topic",
        settings.clicks_topic,
        "--recommendations-topic",
        settings.recommendations_topic,
        "--resamples",
        "100",
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    arm = json.loads(done.stdout)["variants"][""]
    assert arm["clicks_scored"] == live("online_predictions") > 250
    assert arm["hr"] * arm["clicks_scored"] == pytest.approx(live("online_hits"))
    assert arm["mrr"] * arm["clicks_scored"] == pytest.approx(live("online_reciprocal_rank"))
