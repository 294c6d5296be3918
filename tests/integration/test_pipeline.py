"""The whole path over real sockets: embedded broker, embedded Redis, a worker process."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from stream.dev.generate import malformed_records, synthetic_clicks
from stream.events import Recommendation
from stream.kafka.consumer import make_consumer
from stream.kafka.producer import replay
from stream.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(worker_factory: Any) -> Any:
    return worker_factory()


def send(settings: Settings, records: list[Any]) -> None:
    replay(
        records,
        bootstrap_servers=settings.bootstrap_servers,
        topic=settings.clicks_topic,
        progress=False,
    )


def collect(
    settings: Settings, topic: str, done: Callable[[list[Any]], bool], timeout_s: float = 45.0
) -> list[Any]:
    """Every record of `topic` read from the start until `done(records)` or the timeout."""
    consumer = make_consumer(settings.bootstrap_servers, [topic], idle_timeout_s=0.3)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(records) and time.monotonic() < deadline:
            records.extend(consumer)
    finally:
        consumer.close()
    return records


def recommendations_for(
    settings: Settings, event_ids: set[str], timeout_s: float = 45.0
) -> list[Recommendation]:
    def parsed(records: list[Any]) -> list[Recommendation]:
        recs = [Recommendation.from_json(r.value) for r in records]
        return [rec for rec in recs if rec.source_event_id in event_ids]

    records = collect(
        settings,
        settings.recommendations_topic,
        lambda rs: {r.source_event_id for r in parsed(rs)} >= event_ids,
        timeout_s,
    )
    return parsed(records)


def metric(url: str, sample: str) -> float:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    return 0.0


def clicks(n: int, tag: str, **kwargs: Any) -> list[dict[str, Any]]:
    events = list(synthetic_clicks(n, **kwargs))
    for event in events:
        event["user_id"] = f"{tag}-{event['user_id']}"
        event["event_id"] = f"{tag}-{event['event_id']}"
        event["timestamp"] = time.time()
    return events


def test_every_valid_click_gets_one_recommendation_that_parses(worker: Any) -> None:
    settings = worker.settings
    events = clicks(300, uuid.uuid4().hex[:6], users=40, items=60, seed=1)
    send(settings, events)
    wanted = {e["event_id"] for e in events}
    recs = recommendations_for(settings, wanted)

    by_event = {rec.source_event_id: rec for rec in recs}
    assert set(by_event) == wanted
    assert len(recs) == len(events), "exactly one recommendation per accepted click"
    for event in events:
        rec = by_event[event["event_id"]]
        assert rec.user_id == event["user_id"]
        assert rec.event_time == pytest.approx(event["timestamp"])
        assert rec.model_version == "torch-gru-64d:online"
        scores = [item.score for item in rec.items]
        assert scores == sorted(scores, reverse=True), "items are best first"
        assert len(rec.items) <= settings.top_k
        # Policy `seen`: the item just clicked is never recommended back.
        assert event["item_id"] not in {item.item_id for item in rec.items}
    # After 300 clicks on 60 items, recommendations are full.
    assert len(by_event[events[-1]["event_id"]].items) == settings.top_k


def test_recommendation_records_are_keyed_by_user(worker: Any) -> None:
    settings = worker.settings
    events = clicks(5, uuid.uuid4().hex[:6], users=2, items=10, seed=2)
    send(settings, events)
    wanted = {e["event_id"] for e in events}
    records = collect(
        settings,
        settings.recommendations_topic,
        lambda rs: wanted <= {orjson.loads(r.value)["source_event_id"] for r in rs},
    )
    mine = [r for r in records if orjson.loads(r.value)["source_event_id"] in wanted]
    assert len(mine) == 5
    for record in mine:
        assert record.key == orjson.loads(record.value)["user_id"].encode()


def test_malformed_events_go_to_the_dlq_while_valid_ones_flow(worker: Any) -> None:
    settings = worker.settings
    bad = malformed_records(settings.max_event_bytes)
    good = clicks(len(bad), uuid.uuid4().hex[:6], users=5, items=10, seed=3)
    interleaved: list[Any] = [
        x for pair in zip(good, (value for value, _ in bad), strict=True) for x in pair
    ]
    before = metric(worker.metrics_url, 'streamrec_events_rejected_total{reason="invalid_json"}')
    send(settings, interleaved)

    recs = recommendations_for(settings, {e["event_id"] for e in good})
    assert len(recs) == len(good)
    dead = collect(settings, settings.dlq_topic, lambda rs: len(rs) >= len(bad))
    assert len(dead) == len(bad)
    got = sorted((r.value, dict(r.headers)["error"].decode()) for r in dead)
    # A too_large value is kept cut to max_event_bytes (stream.events.dead_letter).
    limit = settings.max_event_bytes
    assert got == sorted((value[:limit], reason) for value, reason in bad)
    assert all(dict(r.headers)["detail"] for r in dead if dict(r.headers)["error"] != b"empty")
    after = metric(worker.metrics_url, 'streamrec_events_rejected_total{reason="invalid_json"}')
    assert after - before == 1


def test_a_repeated_event_id_is_applied_once(worker: Any) -> None:
    settings = worker.settings
    tag = uuid.uuid4().hex[:6]
    first, second = clicks(2, tag, users=1, items=5, seed=4)
    second["user_id"] = first["user_id"]
    before = metric(worker.metrics_url, "streamrec_duplicates_skipped_total")
    # The repeat arrives between the two: same user, so the same partition and order.
    send(settings, [first, dict(first), second])
    recs = recommendations_for(settings, {first["event_id"], second["event_id"]})
    assert sorted(rec.source_event_id for rec in recs) == sorted(
        [first["event_id"], second["event_id"]]
    )
    assert metric(worker.metrics_url, "streamrec_duplicates_skipped_total") - before == 1


def test_a_second_click_reflects_the_first(worker: Any) -> None:
    settings = worker.settings
    tag = uuid.uuid4().hex[:6]
    # Warm the catalogue so both users have plenty to be recommended.
    warm = clicks(200, tag, users=20, items=40, seed=5)
    send(settings, warm)
    recommendations_for(settings, {warm[-1]["event_id"]})
    now = time.time()
    alice = [
        {"user_id": f"{tag}-alice", "item_id": "i1", "event_id": f"{tag}-a1", "timestamp": now},
        {"user_id": f"{tag}-alice", "item_id": "i7", "event_id": f"{tag}-a2", "timestamp": now},
    ]
    bob = [
        {"user_id": f"{tag}-bob", "item_id": "i2", "event_id": f"{tag}-b1", "timestamp": now},
        {"user_id": f"{tag}-bob", "item_id": "i7", "event_id": f"{tag}-b2", "timestamp": now},
    ]
    send(settings, alice + bob)
    recs = {r.source_event_id: r for r in recommendations_for(settings, {f"{tag}-a2", f"{tag}-b2"})}
    alice_items = [i.item_id for i in recs[f"{tag}-a2"].items]
    bob_items = [i.item_id for i in recs[f"{tag}-b2"].items]
    # Same last click, different first click: the user context makes them differ,
    # and the first click is excluded (policy `seen`).
    assert "i1" not in alice_items and "i2" not in bob_items
    assert alice_items != bob_items or [i.score for i in recs[f"{tag}-a2"].items] != [
        i.score for i in recs[f"{tag}-b2"].items
    ]


def test_vectors_reach_redis_and_metrics_count_the_stream(worker: Any) -> None:
    settings = worker.settings
    tag = uuid.uuid4().hex[:6]
    events = clicks(50, tag, users=5, items=8, seed=6)
    send(settings, events)
    recommendations_for(settings, {e["event_id"] for e in events})
    client = redis.Redis.from_url(settings.redis_url)
    try:
        for item in {e["item_id"] for e in events}:
            raw = client.hget(f"{settings.redis_prefix}item:{item}", "v")
            assert raw is not None, f"item {item} has no vector in Redis"
            vector = np.frombuffer(raw, dtype="<f4")
            assert vector.shape == (settings.dim,) and np.isfinite(vector).all()
        user = events[-1]["user_id"]
        assert client.ttl(f"{settings.redis_prefix}user:{user}") > 0
    finally:
        client.close()
    consumed = metric(worker.metrics_url, "streamrec_events_consumed_total")
    emitted = metric(worker.metrics_url, "streamrec_recommendations_emitted_total")
    assert consumed >= emitted >= 50
    assert metric(worker.metrics_url, "streamrec_click_to_recommendation_seconds_count") == emitted


def test_web_server_binds_loopback_only_and_serves_no_table_contents(worker: Any) -> None:
    import psutil

    listening = [
        c.laddr
        for c in psutil.Process(worker.process.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening, "the worker listens on nothing"
    assert {address.ip for address in listening} == {"127.0.0.1"}
    table_view = f"http://127.0.0.1:{worker.settings.web_port}/table/user_contexts/"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(table_view, timeout=5)
    assert refused.value.code == 404


def test_a_baseline_worker_learns_a_planted_sequence_from_the_stream(worker_factory: Any) -> None:
    # STREAMREC_MODEL picks the recommender; covisit must learn "after A comes B" from
    # the live stream alone, so a new user who clicks A is told B first.
    covisit = worker_factory(model="covisit")
    settings = covisit.settings
    tag = uuid.uuid4().hex[:6]
    now = time.time()
    events: list[dict[str, Any]] = []
    for n in range(30):
        user = f"{tag}-u{n}"
        for step, item in enumerate(["A", "B", f"noise{n}"]):
            events.append(
                {
                    "user_id": user,
                    "item_id": item,
                    "timestamp": now,
                    "event_id": f"{tag}-{n}-{step}",
                }
            )
    # P is twice as popular as B, so a model that ignored the sequence would say P.
    events += [
        {"user_id": f"{tag}-p{n}", "item_id": "P", "timestamp": now, "event_id": f"{tag}-p{n}"}
        for n in range(60)
    ]
    probe = {
        "user_id": f"{tag}-probe",
        "item_id": "A",
        "timestamp": now,
        "event_id": f"{tag}-probe",
    }
    send(settings, events)
    recommendations_for(settings, {e["event_id"] for e in events})
    send(settings, [probe])
    (rec,) = recommendations_for(settings, {probe["event_id"]})
    assert rec.model_version.startswith("covisit")
    assert rec.items[0].item_id == "B"
    assert "A" not in {item.item_id for item in rec.items}


def test_online_hit_rate_equals_one_computed_offline_from_the_topics(worker_factory: Any) -> None:
    # A fresh worker, so its counters cover exactly this stream.
    fresh = worker_factory()
    settings = fresh.settings
    events = clicks(400, uuid.uuid4().hex[:6], users=20, items=30, seed=7)
    send(settings, events)
    recs = {
        r.source_event_id: r for r in recommendations_for(settings, {e["event_id"] for e in events})
    }
    # Offline: each click scored against the recommendation after the user's previous click.
    previous: dict[str, list[str]] = {}
    predictions = hits = 0
    reciprocal_ranks = 0.0
    for event in events:
        shown = previous.get(event["user_id"])
        if shown:
            predictions += 1
            if event["item_id"] in shown:
                hits += 1
                reciprocal_ranks += 1 / (shown.index(event["item_id"]) + 1)
        previous[event["user_id"]] = [i.item_id for i in recs[event["event_id"]].items]
    assert predictions > 300 and hits > 0
    url = fresh.metrics_url
    assert metric(url, "streamrec_online_predictions_total") == predictions
    assert metric(url, "streamrec_online_hits_total") == hits
    assert metric(url, "streamrec_online_reciprocal_rank_total") == pytest.approx(reciprocal_ranks)
    # The rest of the exposition after this known stream.
    assert metric(url, "streamrec_events_consumed_total") == len(events)
    assert metric(url, "streamrec_recommendations_emitted_total") == len(events)
    assert metric(url, "streamrec_model_updates_total") == len(events)
    # Observed once per changed item per wave (the batch step reports an item's net
    # change on the last click that made it), and a user's first click on a known item
    # changes no item vector: fewer than all, but many.
    assert (
        50 < metric(url, 'streamrec_vector_freshness_seconds_count{store="index"}') <= len(events)
    )
    assert metric(url, "streamrec_duplicates_skipped_total") == 0
    deadline = time.monotonic() + 10  # users_in_state is refreshed every 5 s
    while metric(url, "streamrec_users_in_state") != 20 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert metric(url, "streamrec_users_in_state") == 20


def test_the_metrics_exposition_passes_promtool(worker: Any) -> None:
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    body = urllib.request.urlopen(worker.metrics_url, timeout=5).read()
    checked = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_a_worker_starts_from_a_trained_checkpoint(worker_factory: Any, tmp_path: Path) -> None:
    # `streamrec train` learns "after A comes B" offline; a worker started from its
    # checkpoint recommends B to a brand-new user who clicks A, and names the version.
    rows = ["SessionId\tItemId\tTime"]
    for n in range(40):
        rows += [f"s{n}\tA\t{1_600_000_000 + 3 * n}", f"s{n}\tB\t{1_600_000_001 + 3 * n}"]
    rows += [f"p{n}\tP\t{1_600_001_000 + n}" for n in range(80)]  # P: most popular
    data = tmp_path / "history.tsv"
    data.write_text("\n".join(rows) + "\n")
    model_file = tmp_path / "covisit.safetensors"
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "train",
            "--data",
            str(data),
            "--model",
            "covisit",
            "--out",
            str(model_file),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert trained.returncode == 0, trained.stderr
    version = orjson.loads(trained.stdout.strip().splitlines()[-1])["version"]

    started = worker_factory(checkpoint=str(model_file))
    settings = started.settings
    probe = {
        "user_id": f"probe-{uuid.uuid4().hex[:6]}",
        "item_id": "A",
        "timestamp": time.time(),
        "event_id": uuid.uuid4().hex,
    }
    send(settings, [probe])
    (rec,) = recommendations_for(settings, {probe["event_id"]})
    assert rec.model_version == version
    assert rec.items[0].item_id == "B"


def test_unkeyed_clicks_are_rerouted_to_their_users_partition(worker_factory: Any) -> None:
    # Clicks sent without a key land on arbitrary partitions; the worker must forward
    # them by user id so each user's context still lives in one place.
    fresh = worker_factory()
    settings = fresh.settings
    tag = uuid.uuid4().hex[:6]
    now = time.time()
    events = [
        {
            "user_id": f"{tag}-u{n % 5}",
            "item_id": f"i{n}",
            "timestamp": now,
            "event_id": f"{tag}-{n}",
        }
        for n in range(60)
    ]
    send(settings, [orjson.dumps(event) for event in events])  # bytes: sent with no key
    recs = {
        r.source_event_id: r for r in recommendations_for(settings, {e["event_id"] for e in events})
    }
    assert len(recs) == len(events)
    assert metric(fresh.metrics_url, "streamrec_events_rerouted_total") > 0
    # Policy `seen`: every earlier click of the same user is excluded, whichever
    # partition it arrived on, because the user's context is one record.
    for n, event in enumerate(events):
        earlier = {e["item_id"] for e in events[:n] if e["user_id"] == event["user_id"]}
        shown = {item.item_id for item in recs[event["event_id"]].items}
        assert not shown & earlier, f"{event['event_id']} recommended an item already seen"


def test_clicks_keyed_by_user_take_no_extra_hop(worker: Any) -> None:
    before = metric(worker.metrics_url, "streamrec_events_rerouted_total")
    events = clicks(50, uuid.uuid4().hex[:6], users=10, items=20, seed=8)
    send(worker.settings, events)  # dicts: keyed by user id (kafka-python murmur2)
    recommendations_for(worker.settings, {e["event_id"] for e in events})
    assert metric(worker.metrics_url, "streamrec_events_rerouted_total") == before
