"""End-to-end figures on the embedded broker and Redis: throughput, latency, freshness.

Placement on a 2-core machine: the broker, Redis and this script (the producer and the
reader) on core 0, each worker on core 1 (CPU affinity is inherited at fork, so the
script pins itself before starting each child). Every figure comes from Kafka record
timestamps or from polling the workers and Redis, never from the worker's own metrics.

- throughput: N clicks produced as fast as the producer goes into an idle worker;
  events/s = recommendations / (last - first recommendation record timestamp).
- latency: clicks at 70% of that rate for a fixed time; per click, recommendation record
  timestamp minus click record timestamp. Each latency run also reports its backlog: clicks
  sent whose recommendation was not yet out when the last click was sent (a healthy run
  has about rate x latency in flight; one whose queue grew has far more), clicks with no
  recommendation within the timeout (`missing`: their latency is not in the percentiles)
  and the time from the last click to the last recommendation (`drain_ms`).
- rate ladder: latency runs of a fixed time at rising shares of the throughput
  (`LADDER`), stopping at the first whose p99 exceeds 50 ms or that misses a
  recommendation; `max_rate_p99_20ms` and `max_rate_p99_50ms` are the highest rates
  before the first step that missed 20 and 50 ms (0: the first did). 50 ms is the
  issue's bound on p99 at a sustained rate, 20 ms its goal.
- scaling: a second worker joins the group, on the worker core too (the machine has no
  third core; on the services core it would compete with the broker, Redis and this
  script), and the same throughput run is repeated; the ratio is two workers' events/s
  over one's, so it shows what the group's coordination costs, not what a core gains.
- freshness: the same two workers in one group under background load; a probe user clicks item a
  then item t; the time from the second click's record timestamp until both workers'
  `/api/items/t` and Redis show a newer version of t. The throughput runs before it leave
  item deltas queued at the items' owners, and probes right after them measured that
  queue's drain (README, "Benchmarks"), not the load's steady state; so the
  background load starts once every worker reports no consumer lag (clicks and item
  deltas, `drained_after_s`), and probes once it has run for `FRESHNESS_SETTLE_S`.
  `probe_ms` lists every probe's time in order.
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
from collections.abc import Callable, Iterator, Sequence
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
from stream.kafka.topics import ensure_topics, worker_topics
from stream.settings import Settings
from stream.worker.redis_health import STARTUP_WRITE_DONE

SERVICES_CORE = 0
WORKER_CORE = 1
LADDER = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9)
"""Rates of the latency ladder, as shares of the measured throughput."""
LADDER_MIN_CLICKS = 300
"""Clicks per ladder step at least: its p99 is then about the 4th largest wait, not the 2nd."""
FRESHNESS_SETTLE_S = 5.0
"""Seconds of background load before the first freshness probe."""
LAG_REPORT_S = 5.0
"""How often a worker refreshes `streamrec_consumer_lag` (Housekeeping.report_state)."""
SCALING_PLACEMENT = "both workers share core 1; the broker, Redis and the producer run on core 0"


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


def prepare(settings: Settings) -> None:
    """The worker's data directory and topics, before it starts."""
    Path(settings.data_dir).mkdir(parents=True)
    ensure_topics(settings.bootstrap_servers, worker_topics(settings), settings.partitions)


def warm_up(
    settings: Settings, items: int, clicks: int = 500, users: int = 200, seed: int = 99
) -> None:
    """`clicks` of `users` users through the worker, until it has answered them all: the
    first clicks of many users touch cold code paths and allocations."""
    warm = click_stream(clicks, items=items, users=users, seed=seed)
    replay(
        warm,
        bootstrap_servers=settings.bootstrap_servers,
        topic=settings.clicks_topic,
        progress=False,
    )
    read_recommendations(settings, {e["event_id"] for e in warm}, timeout_s=300)


class Worker:
    """One `streamrec worker` process pinned to `core`."""

    def __init__(self, settings: Settings, log_path: Path, core: int = WORKER_CORE) -> None:
        self.settings = settings
        self.log_path = log_path
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with pinned(core):
            self.process = start_worker(settings, log_path, timeout=600)

    @property
    def url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    def wait_rebuilt(self, timeout_s: float = 900) -> None:
        """Until the start-up rewrite of Redis is done (it would compete with clicks)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if STARTUP_WRITE_DONE in self.log_path.read_text(errors="replace"):
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
    nan = float("nan")
    return {
        "rate": rate,
        "events": len(events),
        "recommendations": len(stamps),
        **backlog(sent.sent_at_ms, stamps),
        "latency_ms_p50": percentile(waits, 50) if waits else nan,
        "latency_ms_p99": percentile(waits, 99) if waits else nan,
        "latency_ms_p999": percentile(waits, 99.9) if waits else nan,
    }


def backlog(sent_at_ms: dict[str, int], out_at_ms: dict[str, int]) -> dict[str, float]:
    """From send and recommendation times (ms) by event id: `missing` (sent, never
    answered), `backlog_at_end` (sent, not answered when the last click was sent) and
    `drain_ms` (last click sent to last recommendation out; NaN with none out)."""
    last_sent = max(sent_at_ms.values(), default=0)
    answered = sum(out_at_ms[e] <= last_sent for e in sent_at_ms if e in out_at_ms)
    return {
        "missing": sum(e not in out_at_ms for e in sent_at_ms),
        "backlog_at_end": len(sent_at_ms) - answered,
        "drain_ms": max(out_at_ms.values()) - last_sent if out_at_ms else float("nan"),
    }


def climb_to(
    rates: Sequence[float],
    measure: Callable[[int, float], dict[str, float]],
    goals_ms: Sequence[float],
) -> tuple[list[dict[str, float]], dict[float, float]]:
    """`measure(i, rate)` for each rate in order, up to and including the first whose p99
    exceeds the loosest of `goals_ms` or that has a click never answered. Returns the
    steps and, for each goal, the highest rate before the first step that missed it
    (0.0 when the first did)."""
    steps: list[dict[str, float]] = []
    best = dict.fromkeys(goals_ms, 0.0)
    open_goals = set(goals_ms)
    for i, rate in enumerate(rates):
        if not open_goals:
            break
        step = measure(i, rate)
        steps.append(step)
        for goal in sorted(open_goals):
            if step["latency_ms_p99"] <= goal and step["missing"] == 0:
                best[goal] = rate
            else:
                open_goals.discard(goal)
    return steps, best


def rate_ladder(
    worker: Worker,
    items: int,
    top_rate: float,
    seconds: float,
    goals_ms: Sequence[float] = (20.0, 50.0),
    log: Any = print,
) -> dict[str, Any]:
    """Latency runs of `seconds` (at least `LADDER_MIN_CLICKS` clicks) at each `LADDER`
    share of `top_rate`, up to the first that misses the loosest of `goals_ms` at p99
    (or loses a recommendation); `max_rate_p99_<goal>ms` for each goal."""

    def measure(i: int, rate: float) -> dict[str, float]:
        count = max(LADDER_MIN_CLICKS, int(rate * seconds))
        paced = click_stream(count, items=items, users=max(100, count // 10), seed=10 + i)
        step = latency(worker, paced, rate)
        log(
            f"[{items} items] ladder {rate:.0f} clicks/s: p99 {step['latency_ms_p99']:.0f} ms,"
            f" backlog at end {step['backlog_at_end']}, missing {step['missing']}"
        )
        return step

    steps, best = climb_to([share * top_rate for share in LADDER], measure, goals_ms)
    ladder: dict[str, Any] = {
        "goal_ms": min(goals_ms),  # the key reports before 2026-12-05 had
        "goals_ms": list(goals_ms),
        "seconds": seconds,
        "steps": steps,
    }
    for goal, rate in best.items():
        ladder[f"max_rate_p99_{goal:g}ms"] = rate
    return ladder


def consumer_lag(worker: Worker) -> float | None:
    """The sum of the worker's `streamrec_consumer_lag` series; None if /metrics does not
    answer."""
    try:
        with urllib.request.urlopen(f"{worker.url}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("streamrec_consumer_lag{")
    )


def wait_drained(workers: list[Worker], timeout_s: float = 600) -> float:
    """Seconds until every worker has reported no consumer lag for `LAG_REPORT_S` plus
    a second (so at least one report made after the wait began says so). TimeoutError
    after `timeout_s`."""
    start = time.monotonic()
    zero_since: float | None = None
    while time.monotonic() - start < timeout_s:
        now = time.monotonic()
        if all(consumer_lag(worker) == 0 for worker in workers):
            zero_since = now if zero_since is None else zero_since
            if now - zero_since >= LAG_REPORT_S + 1:
                return now - start
        else:
            zero_since = None
        time.sleep(0.5)
    raise TimeoutError(f"the workers still report consumer lag after {timeout_s:.0f} s")


def freshness(
    workers: list[Worker],
    items: int,
    background: list[dict[str, Any]],
    rate: float,
    probes: int = 40,
    settle_s: float = FRESHNESS_SETTLE_S,
) -> dict[str, Any]:
    settings = workers[0].settings
    drained_after_s = wait_drained(workers)
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
    time.sleep(settle_s)
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
        "drained_after_s": round(drained_after_s, 1),
        "settle_s": settle_s,
        "freshness_ms_p50": percentile(waits, 50) if waits else float("nan"),
        "freshness_ms_p99": percentile(waits, 99) if waits else float("nan"),
        "probe_ms": [round(wait) for wait in waits],
    }


def scaling(worker: Worker, items: int, events: int, one: dict[str, float]) -> dict[str, Any]:
    """The throughput run again, now that a second worker shares the group."""
    warm_up(worker.settings, items, seed=98)
    stream = click_stream(events, items=items, users=max(100, events // 10), seed=4)
    two = throughput(worker, stream)
    return {
        "placement": SCALING_PLACEMENT,
        "one_worker_events_per_s": one["events_per_s"],
        "two_workers_events_per_s": two["events_per_s"],
        "ratio_2_over_1": two["events_per_s"] / one["events_per_s"],
        "two_workers": two,
    }


def second_worker(settings: Settings, log_path: Path, core: int) -> Worker:
    """Another worker in the same group, with its own web port and data directory."""
    data_dir = Path(settings.data_dir) / log_path.stem
    changed = dataclasses.replace(settings, web_port=free_port(), data_dir=str(data_dir))
    return Worker(changed, log_path, core=core)


def end_to_end(
    stack: DevStack,
    workdir: Path,
    checkpoint: Path,
    items: int,
    *,
    events: int,
    latency_s: float = 0.0,
    ladder_s: float = 0.0,
    with_freshness: bool = False,
    log: Any = print,
) -> dict[str, Any]:
    """Throughput at `items` items; with `latency_s`, latency at 70% of it; with
    `ladder_s`, the rate ladder; with `with_freshness`, a second worker: scaling, then
    freshness across the two."""
    settings = bench_settings(stack, workdir, checkpoint)
    prepare(settings)
    log(f"[{items} items] starting a worker (loading the catalogue, rewriting Redis) ...")
    worker = Worker(settings, workdir / f"worker-{items}.log")
    result: dict[str, Any] = {"items": items}
    try:
        worker.wait_rebuilt()
        warm_up(settings, items)
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
        if ladder_s:
            log(f"[{items} items] rate ladder: {ladder_s:.0f} s per rate, up to p99 > 50 ms ...")
            top = result["throughput"]["events_per_s"]
            result["ladder"] = rate_ladder(worker, items, top, ladder_s, log=log)
        if with_freshness:
            log(f"[{items} items] scaling: a second worker joins (on the worker core) ...")
            second = second_worker(settings, workdir / f"worker-{items}-second.log", WORKER_CORE)
            try:
                # Its start-up rewrite of Redis would compete with the clicks; the group
                # rebalances onto both workers meanwhile, or within the 10 s after.
                second.wait_rebuilt()
                time.sleep(10)
                result["scaling"] = scaling(worker, items, events, result["throughput"])
                log(f"[{items} items] freshness: probes under load ...")
                # Enough load for the settling and about 0.6 s per probe.
                load_s = FRESHNESS_SETTLE_S + 35
                load = click_stream(int(0.3 * rate * load_s), items=items, users=2000, seed=3)
                result["freshness"] = freshness([worker, second], items, load, 0.3 * rate)
            finally:
                second.stop()
    finally:
        worker.stop()
    return result
