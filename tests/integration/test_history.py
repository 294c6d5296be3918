"""STREAMREC_EXCLUDE=history over real sockets: a user never receives an item they
clicked, from the push topic or the pull API, across a worker restart."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.events import Recommendation
from stream.kafka.consumer import make_consumer
from stream.kafka.producer import replay
from stream.settings import Settings
from tests.conftest import RunningWorker, unique_settings

pytestmark = pytest.mark.integration

CLICKED = 60  # more than the model's recent window (50): `seen` would forget the first


def send(settings: Settings, events: list[dict[str, Any]]) -> None:
    replay(
        events,
        bootstrap_servers=settings.bootstrap_servers,
        topic=settings.clicks_topic,
        progress=False,
    )


def recommendations(settings: Settings, event_ids: set[str]) -> dict[str, list[str]]:
    """source_event_id -> recommended item ids, for each of `event_ids`."""
    consumer = make_consumer(
        settings.bootstrap_servers, [settings.recommendations_topic], idle_timeout_s=0.5
    )
    found: dict[str, list[str]] = {}
    deadline = time.monotonic() + 60
    try:
        while not set(found) >= event_ids and time.monotonic() < deadline:
            for record in consumer:
                rec = Recommendation.from_json(record.value)
                if rec.source_event_id in event_ids:
                    found[rec.source_event_id] = [item.item_id for item in rec.items]
    finally:
        consumer.close()
    assert set(found) >= event_ids, f"{len(event_ids - set(found))} recommendations missing"
    return found


def click(user: str, item: str, event_id: str) -> dict[str, Any]:
    return {"user_id": user, "item_id": item, "timestamp": time.time(), "event_id": event_id}


def test_a_user_never_receives_an_item_they_clicked_across_a_restart(
    dev_stack: Any, tmp_path: Path
) -> None:
    settings = unique_settings(
        dev_stack, tmp_path, model="popularity", exclude="history", top_k=5, partitions=2
    )
    # The user clicks 60 items; another user then makes the first ten the most
    # popular of all, which is what popularity shows unless they are excluded.
    mine = [f"item-{n}" for n in range(CLICKED)]
    first = [click("reader", item, f"r{n}") for n, item in enumerate(mine)]
    first += [click("crowd", mine[n % 10], f"c{n}") for n in range(200)]
    first += [click("crowd", f"other-{n}", f"o{n}") for n in range(20)]
    worker = RunningWorker(settings, tmp_path / "worker-1.log")
    try:
        send(settings, first)
        recommendations(settings, {event["event_id"] for event in first})
        send(settings, [click("reader", "item-60", "r60")])
        shown = recommendations(settings, {"r60"})["r60"]
        assert len(shown) == 5 and not set(shown) & {*mine, "item-60"}
    finally:
        worker.stop()
    # The user's record comes back from the changelog; a popularity model starts over,
    # so the crowd makes the user's items popular again first.
    worker = RunningWorker(settings, tmp_path / "worker-2.log")
    try:
        again = [click("crowd", mine[n % 10], f"c2-{n}") for n in range(100)]
        again += [click("crowd", f"other-{n}", f"o2-{n}") for n in range(20)]
        send(settings, again)
        recommendations(settings, {event["event_id"] for event in again})
        send(settings, [click("reader", "item-61", "r61")])
        shown = recommendations(settings, {"r61"})["r61"]
        assert len(shown) == 5 and not set(shown) & {*mine, "item-60", "item-61"}
        url = f"http://{settings.web_host}:{settings.web_port}/recommendations/reader?k=5"
        with urllib.request.urlopen(url, timeout=10) as response:
            pulled = [item["item_id"] for item in orjson.loads(response.read())["items"]]
        assert len(pulled) == 5 and not set(pulled) & {*mine, "item-60", "item-61"}
    finally:
        worker.stop()
