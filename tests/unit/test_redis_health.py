"""The Redis link's backoff and its two log lines, the publisher keeping the newest
vector per key through an outage, and the repair on a lost marker (issue 14, items 2
and 3). A fake store fails on demand; tests/integration/test_redis_outage.py does the
same against a real server that is stopped, killed and restarted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import numpy as np
import pytest
import redis

from stream.metrics import WorkerMetrics
from stream.worker.publisher import VectorPublisher
from stream.worker.redis_health import RedisLink, RedisRepair


class FlakyStore:
    """Keeps what it is given, compare-and-set by version, unless `down`."""

    def __init__(self) -> None:
        self.down = False
        self.attempts = 0
        self.vectors: dict[str, tuple[np.ndarray, int]] = {}
        self.markers: set[str] = set()

    def _fail(self) -> None:
        self.attempts += 1
        if self.down:
            raise redis.ConnectionError("Connection refused")

    async def put_vectors(
        self,
        *,
        items: Mapping[str, np.ndarray],
        users: Mapping[str, np.ndarray],
        version: int,
        item_versions: Mapping[str, int] | None = None,
        user_versions: Mapping[str, int] | None = None,
    ) -> int:
        self._fail()
        written = 0
        for kind, vectors, versions in (
            ("item", items, item_versions or {}),
            ("user", users, user_versions or {}),
        ):
            for key, vector in vectors.items():
                ver = versions.get(key, version)
                if ver > self.vectors.get(f"{kind}:{key}", (None, -1))[1]:
                    self.vectors[f"{kind}:{key}"] = (np.asarray(vector), ver)
                    written += 1
        return written

    async def get_item(self, item_id: str) -> tuple[np.ndarray, int] | None:
        return self.vectors.get(f"item:{item_id}")

    async def keep_marker(self, name: str, ttl_s: int) -> bool:
        self._fail()
        return name in self.markers

    async def set_marker(self, name: str, ttl_s: int) -> None:
        self._fail()
        self.markers.add(name)

    async def close(self) -> None:
        pass

    def restart_empty(self) -> None:
        self.vectors.clear()
        self.markers.clear()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "stream.worker.redis_health"]


def test_an_outage_is_logged_once_each_way_and_the_newest_vector_is_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    store, clock, metrics = FlakyStore(), Clock(), WorkerMetrics()
    link = RedisLink(metrics, clock=clock, jitter=lambda: 0.0)
    publisher = VectorPublisher(store, metrics, link)

    async def scenario() -> None:
        store.down = True
        # 25 s of 50 ms flushes, a new vector for u1 before each (issue 14: 473 lines).
        for step in range(500):
            publisher.submit_user("u1", np.full(4, step, dtype=np.float32))
            publisher.submit_user(f"u{step % 7 + 2}", np.ones(4, dtype=np.float32))
            await publisher.flush()
            clock.now += 0.05
        assert metrics.redis_up._value.get() == 0
        # Backoff: 0.05, 0.1, ... doubling to 5 s, jittered to half of it here.
        assert store.attempts < 20
        store.down = False
        clock.now += 5.0
        assert await publisher.flush() == 8

    asyncio.run(scenario())
    assert metrics.redis_up._value.get() == 1
    lines = outage_lines(caplog)
    assert len(lines) == 2, lines
    assert lines[0].startswith("Redis unreachable (ConnectionError: Connection refused): 2 vectors")
    assert lines[1].startswith("Redis reachable again after 30.0 s")
    assert store.vectors["user:u1"][0].tolist() == [499.0] * 4  # the newest one
    assert publisher.pending == 0


def test_the_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    clock = Clock()
    link = RedisLink(WorkerMetrics(), first_delay_s=0.1, max_delay_s=1.0, clock=clock)
    waits = []
    for _ in range(8):
        link.failed(OSError("down"), 0)
        start = clock.now
        while not link.may_try():
            clock.now += 0.001
        waits.append(clock.now - start)
    for attempt, wait in enumerate(waits):
        full = min(1.0, 0.1 * 2**attempt)
        assert full / 2 - 0.002 <= wait <= full + 0.002, (attempt, wait)


def test_a_lost_marker_brings_every_item_and_user_vector_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    store, metrics = FlakyStore(), WorkerMetrics()
    publisher = VectorPublisher(store, metrics)
    items = {f"i{n}": np.full(4, n, dtype=np.float32) for n in range(5)}

    async def write_items() -> int:
        return await store.put_vectors(
            items=items, users={}, version=0, item_versions={i: 3 for i in items}
        )

    repair = RedisRepair(
        store,
        publisher.link,
        metrics,
        write_items=write_items,
        write_users=publisher.write_all_users,
    )

    async def scenario() -> None:
        assert await repair.check()  # on start: no marker yet, so everything is written
        for n in range(3):
            publisher.submit_user(f"u{n}", np.full(4, n, dtype=np.float32))
        await publisher.flush()
        before = dict(store.vectors)
        assert not await repair.check()  # marker there: nothing to do
        store.restart_empty()
        assert await repair.check()
        assert store.vectors.keys() == before.keys()
        for key, (vector, version) in before.items():
            assert store.vectors[key][1] == version  # the version it was written with
            assert store.vectors[key][0].tolist() == vector.tolist()

    asyncio.run(scenario())
    assert metrics.redis_repairs._value.get() == 1
    assert any("wrote back 5 items and 3 users" in line for line in outage_lines(caplog))


def test_a_forgotten_user_is_not_written_back() -> None:
    store, metrics = FlakyStore(), WorkerMetrics()
    publisher = VectorPublisher(store, metrics)

    async def scenario() -> int:
        publisher.submit_user("kept", np.ones(4, dtype=np.float32))
        publisher.submit_user("evicted", np.ones(4, dtype=np.float32))
        await publisher.flush()
        publisher.forget_users(["evicted"])
        store.restart_empty()
        return await publisher.write_all_users()

    assert asyncio.run(scenario()) == 1
    assert list(store.vectors) == ["user:kept"]
