"""Redis faults against a running worker over real sockets (issue 14, items 2 and 3):
a Redis that restarts empty gets every vector back without a worker restart, and a
Redis that stops answering is logged once each way, shows in `streamrec_redis_up`,
and loses none of the vectors queued meanwhile.

Each test has its own broker and Redis (the session's are shared and must not be
stopped)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from stream.dev.harness import scrape_metric
from stream.dev.services import DevStack, start_stack
from stream.kafka.producer import replay
from tests.conftest import RunningWorker, read_topic, unique_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[DevStack]:
    stack = start_stack(tmp_path / "stack")
    try:
        yield stack
    finally:
        os.kill(stack.redis_process.pid, signal.SIGCONT)  # if a test left it stopped
        stack.close()


def clicks(n: int, *, users: int, items: int, tag: str) -> list[dict[str, Any]]:
    return [
        {"user_id": f"u{i % users}", "item_id": f"i{i * 7 % items}", "event_id": f"{tag}{i}"}
        for i in range(n)
    ]


def redis_vectors(stack: DevStack, prefix: str) -> dict[str, tuple[bytes, int]]:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        found = {}
        for kind in ("user", "item"):
            for key in client.scan_iter(match=f"{prefix}{kind}:*", count=1000):
                raw, version = client.hmget(key, ["v", "ver"])
                if raw is not None and version is not None:
                    found[key.decode()] = (raw, int(version))
        return found
    finally:
        client.close()


def wait_until(condition: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.25)
    return bool(condition())


def outage_lines(worker: RunningWorker) -> list[str]:
    text = worker.log_path.read_text(errors="replace")
    return [
        line
        for line in text.splitlines()
        if "Redis unreachable" in line
        or "Redis reachable again" in line
        or "vector write to Redis failed" in line  # the line per flush before issue 14
    ]


def start(stack: DevStack, tmp_path: Path, **overrides: Any) -> RunningWorker:
    settings = unique_settings(stack, tmp_path, model="torch", **overrides)
    return RunningWorker(settings, tmp_path / "worker.log")


def test_a_redis_restarted_empty_gets_every_vector_back(
    own_stack: DevStack, tmp_path: Path
) -> None:
    worker = start(own_stack, tmp_path)
    settings = worker.settings
    try:
        events = clicks(400, users=80, items=50, tag="a")
        replay(
            events,
            bootstrap_servers=settings.bootstrap_servers,
            topic=settings.clicks_topic,
            progress=False,
        )
        assert len(read_topic(settings, settings.recommendations_topic, until=400)) == 400
        keys = {f"{settings.redis_prefix}user:u{n}" for n in range(80)}
        keys |= {f"{settings.redis_prefix}item:{e['item_id']}" for e in events}
        assert wait_until(
            lambda: keys <= redis_vectors(own_stack, settings.redis_prefix).keys(), 20
        )
        time.sleep(1)  # the last broadcasts written
        before = {
            k: v for k, v in redis_vectors(own_stack, settings.redis_prefix).items() if k in keys
        }

        own_stack.restart_redis(down_s=2)
        assert redis_vectors(own_stack, settings.redis_prefix) == {}
        # Before issue 14: nothing came back until the worker restarted.
        assert wait_until(
            lambda: keys <= redis_vectors(own_stack, settings.redis_prefix).keys(), 20
        ), worker.log_tail()
        after = redis_vectors(own_stack, settings.redis_prefix)
        assert {k: after[k] for k in keys} == before
        assert scrape_metric(worker.metrics_url, "streamrec_redis_repairs_total") == 1.0
        assert scrape_metric(worker.metrics_url, "streamrec_redis_up") == 1.0
    finally:
        worker.stop()
    lines = outage_lines(worker)
    assert len(lines) <= 2, lines  # one when it began, one when it ended (if noticed)


def test_a_stopped_redis_is_logged_once_each_way_and_loses_no_queued_vector(
    own_stack: DevStack, tmp_path: Path
) -> None:
    worker = start(own_stack, tmp_path)
    settings = worker.settings
    redis_pid = own_stack.redis_process.pid
    try:
        first = clicks(200, users=40, items=30, tag="a")
        replay(
            first,
            bootstrap_servers=settings.bootstrap_servers,
            topic=settings.clicks_topic,
            progress=False,
        )
        assert len(read_topic(settings, settings.recommendations_topic, until=200)) == 200
        users = {f"{settings.redis_prefix}user:u{n}" for n in range(40)}
        assert wait_until(
            lambda: users <= redis_vectors(own_stack, settings.redis_prefix).keys(), 20
        )
        before = redis_vectors(own_stack, settings.redis_prefix)

        os.kill(redis_pid, signal.SIGSTOP)
        down_seen = []
        try:
            # 8 s of clicks for every user while Redis does not answer.
            during = clicks(400, users=40, items=30, tag="b")
            producing = threading.Thread(
                target=replay,
                args=(during,),
                kwargs={
                    "bootstrap_servers": settings.bootstrap_servers,
                    "topic": settings.clicks_topic,
                    "rate": 50.0,
                    "progress": False,
                },
                daemon=True,
            )
            producing.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                down_seen.append(scrape_metric(worker.metrics_url, "streamrec_redis_up"))
                time.sleep(0.5)
            producing.join()
            assert len(read_topic(settings, settings.recommendations_topic, until=600)) == 600
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        assert 0.0 in down_seen, down_seen
        assert wait_until(lambda: scrape_metric(worker.metrics_url, "streamrec_redis_up") == 1, 15)

        # Every user clicked during the outage has a newer vector than before it.
        def all_newer() -> bool:
            now = redis_vectors(own_stack, settings.redis_prefix)
            return all(k in now and now[k][1] > before[k][1] for k in users)

        assert wait_until(all_newer, 15), worker.log_tail()
    finally:
        worker.stop()
    lines = outage_lines(worker)
    assert len(lines) == 2, lines
    assert "Redis unreachable" in lines[0] and "vectors queued" in lines[0]
    assert "Redis reachable again" in lines[1]
