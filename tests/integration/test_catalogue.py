"""The catalogue (the items topic) over the real broker and Redis: a published item is in
every worker's index and in Redis before its first click, an unavailable item leaves
every list (pushed and pulled) until it is available again, and bad catalogue records
reach the items DLQ with their reasons."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import numpy as np
import orjson
import pytest

from stream.events import Recommendation
from stream.kafka.consumer import make_consumer
from stream.kafka.producer import make_producer
from stream.settings import Settings
from tests.conftest import RunningWorker
from tests.integration.test_bad_input import collect
from tests.integration.test_serving import (
    base_url,
    clicks,
    get_json,
    redis_items,
    send_and_drain,
    two_workers,
    wait_for,
    worker_items,
)

pytestmark = pytest.mark.integration


def publish(settings: Settings, records: list[tuple[bytes | None, bytes]]) -> None:
    """Raw (key, value) records onto the items topic."""
    producer = make_producer(settings.bootstrap_servers)
    try:
        for key, value in records:
            producer.send(settings.items_topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def item(item_id: str, **fields: Any) -> tuple[bytes, bytes]:
    return item_id.encode(), orjson.dumps({"item_id": item_id, **fields})


def metric(worker: RunningWorker, name: str) -> float:
    body = urllib.request.urlopen(worker.metrics_url, timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def recommendations_of(settings: Settings, users: set[str], timeout_s: float = 60) -> list[Any]:
    """Every recommendation event for `users`, once each user has at least one."""
    consumer = make_consumer(
        settings.bootstrap_servers, [settings.recommendations_topic], idle_timeout_s=0.5
    )
    found: list[Recommendation] = []
    deadline = time.monotonic() + timeout_s
    try:
        while {r.user_id for r in found} < users and time.monotonic() < deadline:
            for record in consumer:
                rec = Recommendation.from_json(record.value)
                if rec.user_id in users:
                    found.append(rec)
    finally:
        consumer.close()
    assert {r.user_id for r in found} >= users, "recommendations missing"
    return found


def test_a_published_item_is_in_every_index_and_in_redis_before_its_first_click(
    spawn: Any,
) -> None:
    first, second = two_workers(spawn)
    settings = first.settings
    genres = ["drama", "comedy", "thriller"]
    publish(
        settings,
        [
            item(f"i{n}", title=f"film {n}", categories=[genres[n % 3]], available=True)
            for n in range(60)
        ],
    )
    # Published before any click: each is started from its content.
    cold = "streamrec_items_cold_started_total"
    wait_for(lambda: sum(metric(w, cold) for w in (first, second)) == 60, 30, "60 cold starts")
    # Clicks on catalogue items, so the model has rows with content to learn from.
    send_and_drain(settings, clicks(600, "cat", users=30, items=60, seed=3))

    started = time.monotonic()
    publish(settings, [item("brand-new", title="a new drama", categories=["drama"])])

    def everywhere() -> bool:
        held = [worker_items(w.settings, ["brand-new"]) for w in (first, second)]
        stored = redis_items(settings).get("brand-new")
        return (
            stored is not None
            and all("brand-new" in h for h in held)
            and all(np.array_equal(h["brand-new"][0], stored[0]) for h in held)
        )

    wait_for(everywhere, 30, "the new item in both indexes and in Redis")
    elapsed = time.monotonic() - started
    print(f"catalogue record to both indexes and Redis: {elapsed:.2f} s")
    vector, version = redis_items(settings)["brand-new"]
    assert version > 0 and np.linalg.norm(vector) > 0
    # Its vector is the content vector its owner computed: no click made it.
    assert sum(metric(w, cold) for w in (first, second)) == 61
    status, body = get_json(f"{base_url(settings)}/api/items/brand-new")
    assert status == 200 and body["vector"] == vector.tolist()
    # Recommendable: served to users who never clicked it (a list as long as the
    # catalogue, so its place in the ranking does not matter here).
    served = [
        get_json(f"{base_url(settings)}/recommendations/cat-u{n}?k=61")[1]["items"]
        for n in range(5)
    ]
    assert any("brand-new" in [i["item_id"] for i in items] for items in served)


def test_an_unavailable_item_leaves_every_list_until_it_is_available_again(
    spawn: Any,
) -> None:
    first, second = two_workers(spawn, model="popularity")
    settings = first.settings
    # "hot" is the most clicked item by far.
    warm = clicks(300, "warm", users=20, items=30, seed=4)
    for n, event in enumerate(warm):
        if n % 3 == 0:
            event["item_id"] = "hot"
    send_and_drain(settings, warm)

    def fresh_users(tag: str) -> tuple[set[str], list[Recommendation]]:
        events = clicks(120, tag, users=40, items=30, seed=9)
        send_and_drain(settings, events)
        users = {e["user_id"] for e in events}
        return users, recommendations_of(settings, users)

    users, before = fresh_users("before")
    assert any("hot" in [i.item_id for i in r.items] for r in before), "hot never shown"

    publish(settings, [item("hot", available=False)])
    wait_for(
        lambda: all(metric(w, "streamrec_items_unavailable") == 1 for w in (first, second)),
        30,
        "both workers to read the catalogue record",
    )
    users, during = fresh_users("during")
    assert len(during) >= 120
    assert not [r for r in during if "hot" in [i.item_id for i in r.items]]
    for user in sorted(users)[:10]:
        for worker in (first, second):
            status, body = get_json(f"{base_url(worker.settings)}/recommendations/{user}?k=10")
            assert status == 200 and "hot" not in [i["item_id"] for i in body["items"]]
    status, body = get_json(f"{base_url(settings)}/recommendations/nobody?k=10")
    assert status == 200 and "hot" not in [i["item_id"] for i in body["items"]]

    publish(settings, [item("hot", available=True)])
    wait_for(
        lambda: all(metric(w, "streamrec_items_unavailable") == 0 for w in (first, second)),
        30,
        "both workers to read the item back",
    )
    users, after = fresh_users("after")
    assert any("hot" in [i.item_id for i in r.items] for r in after)


def test_bad_catalogue_records_reach_the_items_dlq_with_their_reasons(spawn: Any) -> None:
    worker = spawn()
    settings = worker.settings
    bad = {
        b"{not json": "invalid_json",
        b"[1, 2]": "not_an_object",
        orjson.dumps({"title": "no id"}): "missing_field",
        orjson.dumps({"item_id": "x", "categories": "drama"}): "invalid_field",
        orjson.dumps({"item_id": "x", "available": "yes"}): "invalid_field",
        orjson.dumps({"item_id": "x", "embedding": [0.1, 0.2]}): "invalid_field",
    }
    publish(settings, [(b"k", value) for value in bad] + [item("fine", title="good")])

    dead = collect(settings, settings.items_dlq_topic, lambda rs: len(rs) >= len(bad))
    assert sorted((d.value, dict(d.headers)["error"].decode()) for d in dead) == sorted(bad.items())
    (embedding,) = [d for d in dead if b"embedding" in d.value]
    assert b"STREAMREC_ITEM_EMBEDDING_DIM" in dict(embedding.headers)["detail"]
    wait_for(lambda: metric(worker, "streamrec_items_consumed_total") == len(bad) + 1, 30, "read")
    assert metric(worker, 'streamrec_items_rejected_total{reason="invalid_field"}') == 3
    assert worker.process.poll() is None
