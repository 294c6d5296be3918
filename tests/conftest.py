"""Fixtures shared by the tiers: the embedded services and a worker on unique topics."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.dev.harness import start_worker
from stream.dev.services import DevStack, free_port, start_stack, stop
from stream.kafka.consumer import make_consumer
from stream.settings import Settings


@pytest.fixture(scope="session")
def dev_stack() -> Iterator[DevStack]:
    """One embedded broker and Redis server for the whole session (they start in ms;
    tests isolate themselves by unique topic names and key prefixes)."""
    stack = start_stack()
    try:
        yield stack
    finally:
        stack.close()


def unique_settings(stack: DevStack, data_dir: Path, **overrides: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings.from_env(
        {},
        bootstrap_servers=stack.bootstrap_servers,
        redis_url=stack.redis_url,
        web_port=free_port(),
        app_id=f"t{tag}",
        clicks_topic=f"clicks-{tag}",
        recommendations_topic=f"recommendations-{tag}",
        dlq_topic=f"clicks-{tag}.dlq",
        items_topic=f"items-{tag}",
        items_dlq_topic=f"items-{tag}.dlq",
        redis_prefix=f"t{tag}:",
        data_dir=str(data_dir),
        **overrides,
    )


class RunningWorker:
    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process = start_worker(settings, log_path)

    @property
    def metrics_url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}/metrics"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        stop(self.process, timeout=15)


@pytest.fixture(scope="module")
def worker_factory(dev_stack: DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Start workers on fresh topics; all are stopped when the module ends."""
    started: list[RunningWorker] = []

    def start(**overrides: Any) -> RunningWorker:
        data_dir = tmp_path_factory.mktemp("worker")
        worker = RunningWorker(
            unique_settings(dev_stack, data_dir, **overrides), data_dir / "worker.log"
        )
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture()
def spawn(dev_stack: DevStack, tmp_path: Path) -> Iterator[Callable[..., RunningWorker]]:
    """Start workers that share one app (topics, group, Redis prefix): `spawn(settings)`
    for another member of a group, `spawn()` for a new app."""
    started: list[RunningWorker] = []

    def start(settings: Settings | None = None, **overrides: Any) -> RunningWorker:
        data_dir = tmp_path / f"worker{len(started)}"
        data_dir.mkdir()
        if settings is None:
            settings = unique_settings(dev_stack, data_dir, **overrides)
        else:
            settings = dataclasses.replace(settings, web_port=free_port(), data_dir=str(data_dir))
        worker = RunningWorker(settings, data_dir / "worker.log")
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


def read_topic(settings: Settings, topic: str, *, until: int, timeout_s: float = 30.0) -> list[Any]:
    """Records of `topic` from the beginning until `until` arrived or `timeout_s` passed."""
    consumer = make_consumer(settings.bootstrap_servers, [topic], idle_timeout_s=0.5)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < until and time.monotonic() < deadline:
            for record in consumer:
                records.append(record)
                if len(records) >= until:
                    break
    finally:
        consumer.close()
    return records
