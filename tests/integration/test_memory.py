"""Bounded memory (issue #6): a worker with a small user cap over more distinct users.

The fast version of bench/memory.py: 100 distinct users into a worker that may keep
40. The least recently active 60 are evicted once their clicks are surely committed
(stream/worker/retention.py), each with a changelog tombstone; every click still gets its
recommendation, and an evicted user who comes back starts again from a cold context.
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import orjson
import pytest

from stream.dev.harness import scrape_metric
from stream.events import Recommendation
from stream.kafka.producer import replay
from tests.conftest import read_topic

pytestmark = pytest.mark.integration

CAP = 40
USERS = 100


def click(user: int, n: int) -> dict[str, Any]:
    return {
        "user_id": f"mem-u{user}",
        "item_id": f"i{(user * 7 + n) % 30}",
        "event_id": f"mem-{user}-{n}",
        "timestamp": 1_700_000_000.0 + 10 * user + n,
    }


def pull(url: str, user: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/recommendations/{user}", timeout=5) as response:
        return orjson.loads(response.read())  # type: ignore[no-any-return]


def test_user_cap_evicts_the_least_recently_active(worker_factory: Any) -> None:
    worker = worker_factory(max_users=CAP)
    settings = worker.settings
    base = f"http://{settings.web_host}:{settings.web_port}"
    # Two clicks from each of users 0..59, then (once all were applied) from 60..99:
    # the first 60 are then the least recently active, whatever order the worker took
    # its partitions in.
    first: list[dict[str, Any]] = []
    for users in (range(USERS - CAP), range(USERS - CAP, USERS)):
        sent = [click(u, n) for u in users for n in range(2)]
        replay(
            sent,
            bootstrap_servers=settings.bootstrap_servers,
            topic=settings.clicks_topic,
            progress=False,
        )
        first += sent
        records = read_topic(settings, settings.recommendations_topic, until=len(first))
        answered = {Recommendation.from_json(r.value).source_event_id for r in records}
        assert answered == {e["event_id"] for e in first}, worker.log_tail()

    # Evictions wait three commit intervals (8.4 s) after a user's last click, and run
    # after each batch and every 5 s.
    evicted_sample = 'streamrec_users_evicted_total{reason="cap"}'
    deadline = time.monotonic() + 30
    while (
        time.monotonic() < deadline
        and (scrape_metric(worker.metrics_url, evicted_sample) or 0) < USERS - CAP
    ):
        time.sleep(0.5)
    assert scrape_metric(worker.metrics_url, evicted_sample) == USERS - CAP, worker.log_tail()
    assert scrape_metric(worker.metrics_url, "streamrec_users_in_state") == CAP
    assert scrape_metric(worker.metrics_url, "streamrec_user_cap") == CAP
    # The oldest users are gone from the table (the pull API knows them no more), the
    # newest are still held.
    assert pull(base, "mem-u0")["source_event_id"] == ""
    assert pull(base, f"mem-u{USERS - CAP - 1}")["source_event_id"] == ""
    assert pull(base, f"mem-u{USERS - CAP}")["source_event_id"] == f"mem-{USERS - CAP}-1"

    # Each eviction wrote a tombstone, so a restarted worker does not recover the user.
    changelog = read_topic(
        settings, settings.changelog_topic, until=2 * len(first) + 1, timeout_s=5
    )
    tombstones = {r.key for r in changelog if r.value is None}
    assert tombstones == {f"mem-u{u}".encode() for u in range(USERS - CAP)}

    # An evicted user's next click works, from a cold context: its record holds only
    # the new click.
    back = click(0, 2)
    replay(
        [back],
        bootstrap_servers=settings.bootstrap_servers,
        topic=settings.clicks_topic,
        progress=False,
    )
    records = read_topic(settings, settings.recommendations_topic, until=len(first) + 1)
    assert back["event_id"] in {Recommendation.from_json(r.value).source_event_id for r in records}
    assert pull(base, "mem-u0")["source_event_id"] == back["event_id"]
