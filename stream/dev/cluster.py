"""A group of worker processes that a test or benchmark can kill and restart, and the
background readers that watch it: what `make chaos` (bench/chaos.py) and the fault
tests (tests/integration/test_faults.py) share."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from stream.dev.harness import scrape_metric
from stream.dev.services import ServiceError, free_port, spawn, stop
from stream.dev.workload import click_stream
from stream.events import Recommendation
from stream.kafka.consumer import make_consumer
from stream.kafka.topics import ensure_topics, worker_topics
from stream.settings import Settings


def run_settings(
    bootstrap_servers: str, redis_url: str, data_dir: Path, **overrides: Any
) -> Settings:
    """Settings for one run: its own app id, topics and Redis prefix."""
    tag = uuid.uuid4().hex[:8]
    return Settings.from_env(
        {},
        bootstrap_servers=bootstrap_servers,
        redis_url=redis_url,
        app_id=f"chaos{tag}",
        clicks_topic=f"clicks-{tag}",
        recommendations_topic=f"recommendations-{tag}",
        dlq_topic=f"clicks-{tag}.dlq",
        redis_prefix=f"chaos{tag}:",
        data_dir=str(data_dir),
        **overrides,
    )


def fresh_topics(stack: Any, data_dir: Path, model: str, log_level: str = "warning") -> Settings:
    """Settings for a run on `stack` with its topics created."""
    settings = run_settings(
        stack.bootstrap_servers, stack.redis_url, data_dir, model=model, log_level=log_level
    )
    ensure_topics(settings.bootstrap_servers, worker_topics(settings), settings.partitions)
    return settings


class Cluster:
    """`workers` worker processes in one consumer group, each in a slot with its own web
    port and data dir, which a restart reuses (like a pod restarted by its controller).

    Not thread-safe: start, kill and restart from the main thread only, since children
    get PR_SET_PDEATHSIG, which fires when the *thread* that spawned them ends."""

    def __init__(self, settings: Settings, workers: int, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.slots = [
            settings.replace(web_port=free_port(), data_dir=str(Path(settings.data_dir) / f"w{n}"))
            for n in range(workers)
        ]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * workers
        self.starts = [0] * workers
        self.kills = 0

    def log_path(self, slot: int) -> Path:
        return self.log_dir / f"worker{slot}-{self.starts[slot]}.log"

    def spawn(self, slot: int) -> None:
        """Start slot's worker process; does not wait for it to be ready."""
        self.starts[slot] += 1
        Path(self.slots[slot].data_dir).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", **self.slots[slot].to_env()}
        self.processes[slot] = spawn(
            [sys.executable, "-m", "stream.cli", "worker"], log_path=self.log_path(slot), env=env
        )

    def start(self, timeout_s: float = 120.0) -> None:
        """Start every worker; blocks until all report ready (ServiceError if not)."""
        for slot in range(len(self.slots)):
            self.spawn(slot)
        deadline = time.monotonic() + timeout_s
        waiting = set(range(len(self.slots)))
        while waiting:
            for slot in sorted(waiting):
                process = self.processes[slot]
                assert process is not None
                if process.poll() is not None:
                    raise ServiceError(f"worker {slot} exited; see {self.log_path(slot)}")
                if self.ready(slot):
                    waiting.discard(slot)
            if time.monotonic() > deadline:
                raise ServiceError(f"workers {sorted(waiting)} not ready after {timeout_s:.0f}s")
            time.sleep(0.25)

    def ready(self, slot: int) -> bool:
        url = f"http://{self.slots[slot].web_host}:{self.slots[slot].web_port}/metrics"
        return scrape_metric(url, "streamrec_worker_ready") == 1.0

    def kill(self, slot: int) -> None:
        """SIGKILL slot's worker (no shutdown code runs) and reap it."""
        process = self.processes[slot]
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            self.kills += 1
        self.processes[slot] = None

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p is not None and p.poll() is None]

    def crashed(self) -> list[int]:
        """Slots whose process ended without being killed by us."""
        return [n for n, p in enumerate(self.processes) if p is not None and p.poll() is not None]

    def restart_crashed(self) -> list[int]:
        """Start a fresh process in every slot whose worker died on its own (what a pod
        controller does); returns those slots, so the caller can count them."""
        crashed = self.crashed()
        for slot in crashed:
            self.spawn(slot)
        return crashed

    def close(self) -> None:
        for slot, process in enumerate(self.processes):
            if process is not None:
                stop(process, timeout=10)
                self.processes[slot] = None


class _Background:
    """A context manager running `_run` on a daemon thread until the block ends;
    `_run` returns once `_stop` is set."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        raise NotImplementedError


class PeakRss(_Background):
    """Samples the resident set size of `pids()` every `interval_s` on a thread."""

    def __init__(self, pids: Callable[[], list[int]], interval_s: float = 0.5) -> None:
        super().__init__("rss")
        self.peak_bytes = 0
        self._pids = pids
        self._interval_s = interval_s

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            for pid in self._pids():
                # A worker may end between the listing and the sample.
                with contextlib.suppress(psutil.Error):
                    self.peak_bytes = max(self.peak_bytes, psutil.Process(pid).memory_info().rss)


class Recommended(_Background):
    """Follows the recommendations topic on a thread: the distinct source event ids
    seen so far, to show progress and tell when the stream has drained."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("recommended")
        self.ids: set[str] = set()
        self._settings = settings

    def _run(self) -> None:
        consumer = make_consumer(
            self._settings.bootstrap_servers,
            [self._settings.recommendations_topic],
            idle_timeout_s=0.5,
        )
        try:
            while not self._stop.is_set():
                for record in consumer:
                    self.ids.add(Recommendation.from_json(record.value).source_event_id)
                    if self._stop.is_set():
                        break
        finally:
            consumer.close()


def wait_drained(
    seen: Callable[[], int], expected: int, quiet_s: float, progress: Callable[[int], None]
) -> bool:
    """Until seen() reaches expected (True) or stays unchanged for quiet_s (False)."""
    last, changed = -1, time.monotonic()
    next_report = 0.0
    while True:
        current = seen()
        if current != last:
            last, changed = current, time.monotonic()
        if current >= expected:
            return True
        if time.monotonic() - changed > quiet_s:
            return False
        if time.monotonic() >= next_report:
            progress(current)
            next_report = time.monotonic() + 5
        time.sleep(0.2)


def make_events(n: int, *, users: int, items: int, seed: int) -> list[dict[str, Any]]:
    """`n` clicks keyed by user with unique ids and event times in the payload (spaced
    1 ms apart, an hour ago), so a replay sees the very same timestamps."""
    events = click_stream(n, items=items, users=users, seed=seed)
    start = time.time() - 3600
    for n_event, event in enumerate(events):
        event["event_id"] = f"chaos{seed}-{n_event}"
        event["timestamp"] = start + n_event / 1000
    return events
