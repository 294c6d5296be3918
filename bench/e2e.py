"""End-to-end figures on the embedded broker and Redis: throughput, latency, freshness.

Placement on a 2-core machine: the broker, Redis and this script (the producer and the
reader) on core 0, each worker on core 1 (CPU affinity is inherited at fork, so the
script pins itself before starting each child). Every figure comes from Kafka record
timestamps or from polling the workers and Redis, never from the worker's own metrics.

- throughput: N clicks produced as fast as the producer goes into an idle worker;
  events/s = recommendations / (last - first recommendation record timestamp).
- latency: clicks at 70% of that rate for a fixed time; per click, recommendation record
  timestamp minus click record timestamp.
- freshness: two workers in one group under background load; a probe user clicks item a
  then item t; the time from the second click's record timestamp until both workers'
  `/api/items/t` and Redis show a newer version of t.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.workload import click_stream, item_id
from stream.dev.harness import start_worker
from stream.dev.services import DevStack, free_port, stop
from stream.events import Recommendation
from stream.kafka.consumer import make_consumer
from stream.kafka.producer import make_producer, replay
from stream.kafka.topics import ensure_topics
from stream.settings import Settings

SERVICES_CORE = 0
WORKER_CORE = 1


@contextlib.contextmanager
def pinned(core: int) -> Iterator[None]:
    """Run the block (and any child it starts) on one core, when the machine has it."""
    if not hasattr(os, "sched_setaffinity") or core >= (os.cpu_count() or 1):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def bench_settings(stack: DevStack, workdir: Path, checkpoint: Path) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings.from_env(
        {},
        bootstrap_servers=stack.bootstrap_servers,
        redis_url=stack.redis_url,
        web_port=free_port(),
        app_id=f"bench{tag}",
        clicks_topic=f"clicks-{tag}",
        recommendations_topic=f"recommendations-{tag}",
        dlq_topic=f"clicks-{tag}.dlq",
        redis_prefix=f"bench{tag}:",
        data_dir=str(workdir / tag),
        checkpoint=str(checkpoint),
        log_level="info",
    )


class Worker:
    """One `streamrec worker` process pinned to the worker core."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with pinned(WORKER_CORE):
            self.process = start_worker(settings, log_path, timeout=600)

    @property
    def url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    def wait_rebuilt(self, timeout_s: float = 900) -> None:
        """Until the start-up rewrite of Redis is done (it would compete with clicks)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "rebuilt Redis" in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise TimeoutError(f"worker did not finish rebuilding Redis; see {self.log_path}")

    def item_version(self, item: str) -> int | None:
        try:
            with urllib.request.urlopen(f"{self.url}/api/items/{item}", timeout=5) as response:
                return orjson.loads(response.read())["version"]  # type: ignore[no-any-return]
        except OSError:
            return None

    def stop(self) -> None:
        stop(self.process, timeout=20)


def read_recommendations(
    settings: Settings, expected: set[str], timeout_s: float
) -> dict[str, int]:
    """source_event_id -> recommendation record timestamp (ms), for `expected` ids."""
    consumer = make_consumer(
        settings.bootstrap_servers, [settings.recommendations_topic], idle_timeout_s=1.0
    )
    found: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < len(expected) and time.monotonic() < deadline:
            for record in consumer:
                event_id = Recommendation.from_json(record.value).source_event_id
                if event_id in expected:
                    found.setdefault(event_id, record.timestamp)
                if len(found) >= len(expected):
                    break
    finally:
        consumer.close()
    return found


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def throughput(worker: Worker, events: list[dict[str, Any]]) -> dict[str, float]:
    settings = worker.settings
    replay(
        events,
        bootstrap_servers=settings.bootstrap_servers,
        topic=settings.clicks_topic,
        progress=False,
    )
    stamps = read_recommendations(settings, {e["event_id"] for e in events}, timeout_s=900)
    first, last = min(stamps.values()), max(stamps.values())
    return {
        "events": len(events),
        "recommendations": len(stamps),
        "seconds": (last - first) / 1000,
        "events_per_s": (len(stamps) - 1) / max(1e-3, (last - first) / 1000),
    }


def latency(worker: Worker, events: list[dict[str, Any]], rate: float) -> dict[str, float]:
    settings = worker.settings
    sent = replay(
        events,
        bootstrap_servers=settings.bootstrap_servers,
        topic=settings.clicks_topic,
        rate=rate,
        progress=False,
    )
    stamps = read_recommendations(settings, set(sent.sent_at_ms), timeout_s=120)
    waits = [stamps[e] - sent.sent_at_ms[e] for e in stamps]
    return {
        "rate": rate,
        "events": len(events),
        "recommendations": len(stamps),
        "latency_ms_p50": percentile(waits, 50),
        "latency_ms_p99": percentile(waits, 99),
        "latency_ms_p999": percentile(waits, 99.9),
    }


def freshness(
    workers: list[Worker],
    items: int,
    background: list[dict[str, Any]],
    rate: float,
    probes: int = 40,
) -> dict[str, float]:
    settings = workers[0].settings
    store = redis.Redis.from_url(settings.redis_url)
    producer = make_producer(settings.bootstrap_servers)
    load = threading.Thread(
        target=replay,
        args=(background,),
        daemon=True,
        kwargs={
            "bootstrap_servers": settings.bootstrap_servers,
            "topic": settings.clicks_topic,
            "rate": rate,
            "progress": False,
        },
    )
    load.start()
    rng = random.Random(7)

    def redis_version(item: str) -> int | None:
        raw = store.hget(f"{settings.redis_prefix}item:{item}", "ver")
        return None if raw is None else int(raw)

    def click(user: str, item: str) -> float:
        now_ms = int(time.time() * 1000)
        value = {"user_id": user, "item_id": item, "event_id": uuid.uuid4().hex}
        producer.send(
            settings.clicks_topic, key=user.encode(), value=orjson.dumps(value), timestamp_ms=now_ms
        )
        producer.flush()
        return now_ms / 1000

    waits: list[float] = []
    timeouts = 0
    try:
        for n in range(probes):
            user = f"probe-{n}-{uuid.uuid4().hex[:6]}"
            first, target = (item_id(rng.randrange(items)) for _ in range(2))
            click(user, first)
            time.sleep(0.3)  # the user now has a last item, so the next click trains t
            before = [w.item_version(target) for w in workers] + [redis_version(target)]
            clicked = click(user, target)
            pending = set(range(len(before)))
            deadline = time.monotonic() + 10
            while pending and time.monotonic() < deadline:
                now = [w.item_version(target) for w in workers] + [redis_version(target)]
                pending = {i for i in pending if now[i] is None or now[i] == before[i]}
                if pending:
                    time.sleep(0.005)
            if pending:
                timeouts += 1
            else:
                waits.append((time.time() - clicked) * 1000)
    finally:
        load.join(timeout=120)
        producer.close()
        store.close()
    return {
        "probes": probes,
        "timeouts": timeouts,
        "freshness_ms_p50": percentile(waits, 50) if waits else float("nan"),
        "freshness_ms_p99": percentile(waits, 99) if waits else float("nan"),
    }


def end_to_end(
    stack: DevStack,
    workdir: Path,
    checkpoint: Path,
    items: int,
    *,
    events: int,
    latency_s: float = 0.0,
    with_freshness: bool = False,
    log: Any = print,
) -> dict[str, Any]:
    """Throughput at `items` items; with `latency_s`, latency at 70% of it; with
    `with_freshness`, freshness across two workers."""
    settings = bench_settings(stack, workdir, checkpoint)
    Path(settings.data_dir).mkdir(parents=True)
    ensure_topics(settings.bootstrap_servers, settings.topics(), settings.partitions)
    log(f"[{items} items] starting a worker (loading the catalogue, rewriting Redis) ...")
    worker = Worker(settings, workdir / f"worker-{items}.log")
    result: dict[str, Any] = {"items": items}
    try:
        worker.wait_rebuilt()
        # Warm-up: first clicks of many users touch cold code paths and allocations.
        warm = click_stream(500, items=items, users=200, seed=99)
        replay(
            warm,
            bootstrap_servers=settings.bootstrap_servers,
            topic=settings.clicks_topic,
            progress=False,
        )
        read_recommendations(settings, {e["event_id"] for e in warm}, timeout_s=300)
        log(f"[{items} items] throughput: {events} clicks as fast as they can be produced ...")
        stream = click_stream(events, items=items, users=max(100, events // 10), seed=1)
        result["throughput"] = throughput(worker, stream)
        rate = 0.7 * result["throughput"]["events_per_s"]
        if latency_s:
            log(f"[{items} items] latency: {latency_s:.0f} s at {rate:.0f} clicks/s (70%) ...")
            paced = click_stream(
                int(rate * latency_s),
                items=items,
                users=max(100, int(rate * latency_s) // 10),
                seed=2,
            )
            result["latency"] = latency(worker, paced, rate)
        if with_freshness:
            log(f"[{items} items] freshness: a second worker joins; probes under load ...")
            second = Worker(
                dataclasses.replace(
                    settings, web_port=free_port(), data_dir=str(Path(settings.data_dir) / "second")
                ),
                workdir / f"worker-{items}-second.log",
            )
            try:
                time.sleep(10)  # the group rebalances onto both workers
                load = click_stream(int(0.3 * rate * 30), items=items, users=2000, seed=3)
                result["freshness"] = freshness([worker, second], items, load, 0.3 * rate)
            finally:
                second.stop()
    finally:
        worker.stop()
    return result
