"""Redis as the worker finds it: outages (`RedisLink`) and data loss (`RedisRepair`).

Issue 14: during a Redis outage a warning per 50 ms flush flooded the log, and a Redis
that restarted empty stayed partial until the worker restarted.

- `RedisLink` is the one place that decides when to try Redis again: after a failure
  it backs off exponentially with jitter (so several workers do not retry in step),
  logs the outage once when it begins (with the vectors queued) and once when it ends,
  and sets `streamrec_redis_up`. Nothing queued is dropped meanwhile: the publisher
  keeps the newest vector per key (stream/worker/publisher.py).
- `RedisRepair` keeps a marker key in Redis for this worker process. A marker that is
  gone means Redis lost data (restarted empty, flushed, or evicted keys), and the
  worker writes back every item vector and user vector it holds. The first check at
  start finds no marker, which is how a fresh worker fills Redis. The marker is set
  before the vectors are written, so a Redis that restarts during a repair loses the
  marker too and is repaired again. Writes are compare-and-set by version, so a
  repair never replaces a newer vector.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable

import redis

from serving.redis_store import VectorStore
from stream.metrics import WorkerMetrics

log = logging.getLogger(__name__)
#: What the log says once a worker's start-up write of every vector to Redis is done
#: (the benchmarks wait for it before they send clicks).
STARTUP_WRITE_DONE = "wrote every vector to Redis on start"

# What a lost connection raises: redis-py's errors, or the OS's before redis-py wraps it.
REDIS_FAILURES = (redis.RedisError, OSError)


class RedisLink:
    """Up or down, and when to try again. Not thread-safe (the worker's event loop).

    `clock` and `jitter` (a random number in [0, 1)) are the test seams.
    """

    def __init__(
        self,
        metrics: WorkerMetrics,
        *,
        first_delay_s: float = 0.1,
        max_delay_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.metrics = metrics
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.clock = clock
        self.jitter = jitter
        self.failures = 0  # consecutive failed attempts; 0 while up
        self._down_since = 0.0
        self._next_try = 0.0

    @property
    def up(self) -> bool:
        return self.failures == 0

    def may_try(self) -> bool:
        """True while up, and once the current backoff has passed."""
        return self.up or self.clock() >= self._next_try

    def failed(self, exc: BaseException, pending: int) -> None:
        """An attempt failed: back off (exponential, jittered between half and all of
        the delay), and log the outage if it just began."""
        now = self.clock()
        self.metrics.redis_errors.inc()
        if self.up:
            self._down_since = now
            self.metrics.redis_up.set(0)
            log.warning(
                "Redis unreachable (%s): %d vectors queued, newest per key kept; retrying "
                "with backoff up to %.0f s, one line when it is back",
                _one_line(exc),
                pending,
                self.max_delay_s,
            )
        self.failures += 1
        delay = min(self.max_delay_s, self.first_delay_s * 2 ** (self.failures - 1))
        self._next_try = now + delay * (0.5 + 0.5 * self.jitter())

    def succeeded(self) -> None:
        """An attempt succeeded: if Redis was down, the outage ends (logged once)."""
        if self.up:
            return
        log.warning(
            "Redis reachable again after %.1f s (%d failed attempts); queued vectors are "
            "being written",
            self.clock() - self._down_since,
            self.failures,
        )
        self.failures = 0
        self.metrics.redis_up.set(1)


class RedisRepair:
    """Checks every `check_s` that Redis still holds this worker's marker, and writes
    every vector back when it does not (`run`, a Faust task).

    `write_items` writes every item vector the worker holds and returns how many were
    written (none for models without item vectors); `write_users` the same for the
    user vectors. `ready` is awaited before the first check (the item vectors caught up
    from their topic), so the first write holds the live vectors.
    """

    def __init__(
        self,
        store: VectorStore,
        link: RedisLink,
        metrics: WorkerMetrics,
        *,
        write_items: Callable[[], Awaitable[int]],
        write_users: Callable[[], Awaitable[int]],
        pending: Callable[[], int] = lambda: 0,
        check_s: float = 1.0,
        marker_ttl_s: int = 600,
    ) -> None:
        self.store = store
        self.link = link
        self.metrics = metrics
        self.write_items = write_items
        self.write_users = write_users
        self.pending = pending
        self.check_s = check_s
        self.marker_ttl_s = marker_ttl_s
        # One marker per worker process: another worker's repair must not hide from
        # this one that Redis lost what this one wrote.
        self.marker = uuid.uuid4().hex
        self.repairs = 0

    async def run(self, ready: Callable[[], Awaitable[object]] | None = None) -> None:
        if ready is not None:
            await ready()
        while True:
            await self.check()
            await asyncio.sleep(self.check_s)

    async def check(self) -> bool:
        """One check, repairing if the marker is gone; True if it repaired. Never
        raises on a Redis failure: the link counts it and backs off."""
        if not self.link.may_try():
            return False
        try:
            if await self.store.keep_marker(self.marker, self.marker_ttl_s):
                self.link.succeeded()
                return False
            self.link.succeeded()
            await self.repair()
        except REDIS_FAILURES as exc:
            self.link.failed(exc, self.pending())
            return False
        return True

    async def repair(self) -> tuple[int, int]:
        """Set the marker, then write every vector; returns (items, users) written.
        Raises what Redis raises."""
        started = time.perf_counter()
        await self.store.set_marker(self.marker, self.marker_ttl_s)
        items = await self.write_items()
        users = await self.write_users()
        elapsed = time.perf_counter() - started
        if self.repairs:
            self.metrics.redis_repairs.inc()
            log.warning(
                "Redis had lost this worker's vectors (marker gone): wrote back %d items "
                "and %d users in %.2f s",
                items,
                users,
                elapsed,
            )
        else:
            log.info(
                STARTUP_WRITE_DONE + ": %d items, %d users in %.2f s",
                items,
                users,
                elapsed,
            )
        self.repairs += 1
        return items, users


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["REDIS_FAILURES", "STARTUP_WRITE_DONE", "RedisLink", "RedisRepair"]
