"""Vector serving over real sockets: the pull API, two workers converging on the item
owners' vectors, and rebuilding Redis and the index from the topics."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from stream.dev.generate import synthetic_clicks
from stream.events import Recommendation
from stream.kafka.producer import replay
from stream.settings import Settings
from tests.conftest import RunningWorker, read_topic

pytestmark = pytest.mark.integration


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def base_url(settings: Settings) -> str:
    return f"http://{settings.web_host}:{settings.web_port}"


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, urllib.error.URLError):
            pass  # the web server is not up yet
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def clicks(n: int, tag: str, **kwargs: Any) -> list[dict[str, Any]]:
    events = list(synthetic_clicks(n, **kwargs))
    for event in events:
        event["user_id"] = f"{tag}-{event['user_id']}"
        event["event_id"] = f"{tag}-{event['event_id']}"
        event["timestamp"] = time.time()
    return events


def send_and_drain(settings: Settings, events: list[dict[str, Any]]) -> None:
    replay(
        events,
        bootstrap_servers=settings.bootstrap_servers,
        topic=settings.clicks_topic,
        progress=False,
    )
    records = read_topic(settings, settings.recommendations_topic, until=len(events), timeout_s=90)
    assert len(records) >= len(events), f"{len(records)} of {len(events)} recommendations"


def redis_items(settings: Settings) -> dict[str, tuple[np.ndarray, int]]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        found = {}
        prefix = f"{settings.redis_prefix}item:"
        for key in client.scan_iter(match=prefix + "*", count=1000):
            raw, version = client.hmget(key, ["v", "ver"])
            found[key.decode()[len(prefix) :]] = (np.frombuffer(raw, dtype="<f4"), int(version))
        return found
    finally:
        client.close()


def worker_items(settings: Settings, ids: list[str]) -> dict[str, tuple[np.ndarray, int | None]]:
    found = {}
    for item_id in ids:
        status, body = get_json(f"{base_url(settings)}/api/items/{item_id}")
        if status == 200:
            found[item_id] = (np.asarray(body["vector"], dtype=np.float32), body["version"])
    return found


def settled(worker: RunningWorker, item_ids: list[str]) -> bool:
    """The worker's index holds every item, each at the version and vector in Redis."""
    in_redis = redis_items(worker.settings)
    held = worker_items(worker.settings, item_ids)
    return sorted(in_redis) == item_ids == sorted(held) and all(
        held[i][1] == in_redis[i][1] and np.array_equal(held[i][0], in_redis[i][0])
        for i in item_ids
    )


def test_the_pull_api_answers_like_a_recommendation_event(spawn: Any) -> None:
    worker = spawn()
    settings = worker.settings
    events = clicks(60, "pull", users=3, items=30, seed=5)
    send_and_drain(settings, events)
    user = events[-1]["user_id"]
    mine = [e for e in events if e["user_id"] == user]

    status, body = get_json(f"{base_url(settings)}/recommendations/{user}?k=5")
    assert status == 200, body
    rec = Recommendation.from_json(orjson.dumps(body))
    assert rec.user_id == user
    assert len(rec.items) == 5
    assert rec.source_event_id == mine[-1]["event_id"]
    # The default policy excludes what the user has seen (of their recent items).
    assert not {i.item_id for i in rec.items} & {e["item_id"] for e in mine[-50:]}
    scores = [i.score for i in rec.items]
    assert scores == sorted(scores, reverse=True)

    status, body = get_json(f"{base_url(settings)}/recommendations/nobody-yet?k=3")
    assert status == 200 and body["source_event_id"] == "" and len(body["items"]) == 3

    status, body = get_json(f"{base_url(settings)}/recommendations/{user}?k=zero")
    assert status == 400 and "k must be an integer" in body["error"]


def two_workers(spawn: Any, **overrides: Any) -> tuple[RunningWorker, RunningWorker]:
    """Two members of one new app on 4 partitions (and `overrides`' settings), once the
    group spans both."""
    first = spawn(partitions=4, **overrides)
    wait_for(lambda: get_json(f"{base_url(first.settings)}/api/index")[0] == 200, 60, "worker 1")
    second = spawn(first.settings)
    wait_for(lambda: get_json(f"{base_url(second.settings)}/api/index")[0] == 200, 60, "worker 2")
    time.sleep(8)  # the group rebalances onto both members
    return first, second


def test_two_workers_converge_on_the_item_owners_vectors(spawn: Any) -> None:
    first, second = two_workers(spawn)
    settings = first.settings
    # Keyed by user, so both workers apply clicks; items are shared across users, so
    # both workers change the same items and the owners must sum their deltas.
    events = clicks(1500, "conv", users=40, items=120, seed=11)
    send_and_drain(settings, events)
    item_ids = sorted({e["item_id"] for e in events})

    def converged() -> bool:
        digests = [get_json(f"{base_url(w.settings)}/api/index")[1] for w in (first, second)]
        return digests[0] == digests[1] and digests[0]["items"] == len(item_ids)

    wait_for(converged, 30, "both indexes to hold the same items and vectors")
    # Redis is written by the owners' flush timer, after the broadcast the indexes
    # follow, so it may trail them by a flush; a lost write would never settle.
    wait_for(lambda: all(settled(w, item_ids) for w in (first, second)), 30, "Redis to match")
    in_redis = redis_items(settings)
    assert sorted(in_redis) == item_ids
    for worker in (first, second):
        held = worker_items(worker.settings, item_ids)
        assert sorted(held) == item_ids
        for item_id, (vector, version) in held.items():
            stored, stored_version = in_redis[item_id]
            assert version == stored_version, item_id
            np.testing.assert_array_equal(vector, stored, err_msg=item_id)
    # Both workers really took part: each applied some of the clicks.
    for worker in (first, second):
        body = urllib.request.urlopen(f"{base_url(worker.settings)}/metrics").read().decode()
        name = "streamrec_model_updates_total "
        applied = [ln for ln in body.splitlines() if ln.startswith(name)]
        assert applied and float(applied[0].split()[1]) > 0, "a worker applied no clicks"


def test_a_worker_rebuilds_an_emptied_redis_and_its_index_from_the_topics(spawn: Any) -> None:
    first = spawn()
    settings = first.settings
    events = clicks(400, "rebuild", users=10, items=50, seed=3)
    send_and_drain(settings, events)
    item_ids = sorted({e["item_id"] for e in events})
    wait_for(lambda: settled(first, item_ids), 30, "the worker's index to equal Redis")
    before = redis_items(settings)
    first_digest = get_json(f"{base_url(settings)}/api/index")[1]
    first.stop()

    client = redis.Redis.from_url(settings.redis_url)
    keys = list(client.scan_iter(match=f"{settings.redis_prefix}*"))
    client.delete(*keys)
    client.close()
    assert redis_items(settings) == {}

    # A new process: empty index, empty Redis, same topics.
    second = spawn(settings)
    wait_for(lambda: sorted(redis_items(settings)) == item_ids, 60, "Redis rebuilt")
    after = redis_items(settings)
    for item_id in item_ids:
        np.testing.assert_array_equal(after[item_id][0], before[item_id][0], err_msg=item_id)
        assert after[item_id][1] == before[item_id][1]
    assert get_json(f"{base_url(second.settings)}/api/index")[1] == first_digest


def test_pull_queries_never_fail_while_the_stream_updates_the_index(spawn: Any) -> None:
    worker = spawn()
    settings = worker.settings
    warm = clicks(50, "busy-warm", users=5, items=80, seed=8)
    send_and_drain(settings, warm)
    users = sorted({e["user_id"] for e in warm})
    outcomes: list[tuple[int, int]] = []
    stop = False

    def ask() -> None:
        n = 0
        while not stop:
            status, body = get_json(f"{base_url(settings)}/recommendations/{users[n % 5]}?k=10")
            outcomes.append((status, len(body.get("items", ())) if status == 200 else -1))
            n += 1

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        # Every click upserts item vectors into the index the queries search.
        send_and_drain(settings, clicks(800, "busy", users=5, items=80, seed=9))
    finally:
        stop = True
        asker.join()
    assert len(outcomes) > 20, "too few queries overlapped the stream to mean anything"
    assert all(status == 200 for status, _ in outcomes), {s for s, _ in outcomes}
    assert all(count == 10 for _, count in outcomes)
