"""Vector writes to Redis, coalesced and flushed off the per-event path.

The agent hands each event's refreshed vectors to `submit` (no I/O, no await); a Faust
timer calls `flush` every few milliseconds and writes everything pending in one round
trip. An item clicked five times between flushes is written once, with its newest
vector. A failed flush keeps what it could not write (newest per key) and the next
attempt waits for the link's backoff (stream/worker/redis_health.py), so Redis being
down costs freshness, not events, and one log line, not one per flush.

The publisher also remembers the last vector it wrote for each user (`written_users`,
about 480 bytes a user with 64-d vectors, forgotten with the user) so that a Redis
that lost its data gets them back (`write_all_users`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from serving.redis_store import VectorStore
from stream.metrics import WorkerMetrics
from stream.worker.redis_health import RedisLink


class VectorPublisher:
    """Pending item and user vectors, newest wins; `flush` writes them all."""

    def __init__(
        self, store: VectorStore, metrics: WorkerMetrics, link: RedisLink | None = None
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.link = link or RedisLink(metrics)
        # user id -> (float32 bytes, version) of the last vector written for the user.
        self.written_users: dict[str, tuple[bytes, int]] = {}
        self._items: dict[str, np.ndarray] = {}
        self._item_versions: dict[str, int] = {}
        self._users: dict[str, np.ndarray] = {}
        # When the click behind each pending item vector was produced (for freshness).
        self._clicked_at: dict[str, float] = {}
        self._version = 0

    @property
    def pending(self) -> int:
        return len(self._items) + len(self._users)

    def submit_user(self, user_id: str, user_vector: np.ndarray) -> None:
        """Queue a user's query vector for the next flush (a newer one replaces it).
        Never blocks, never fails. Item vectors come only from their owners
        (`submit_items`)."""
        self._users[user_id] = user_vector

    def submit_items(
        self,
        items: Mapping[str, np.ndarray],
        versions: Mapping[str, int],
        clicked_at: Mapping[str, float],
    ) -> None:
        """Queue item vectors, each with its own version (the item owner's writes)."""
        self._items.update(items)
        self._item_versions.update(versions)
        self._clicked_at.update(clicked_at)

    async def flush(self) -> int:
        """Write everything pending in one round trip; returns how many were written.

        Errors are counted, never raised: the vectors stay pending, and the link logs
        an outage once and says when to try again.
        """
        if not self._items and not self._users:
            return 0
        if not self.link.may_try():
            return 0
        items, users, clicked_at = self._items, self._users, self._clicked_at
        versions = self._item_versions
        self._items, self._users, self._clicked_at = {}, {}, {}
        self._item_versions = {}
        # Versions only need to grow within this writer; a microsecond clock also keeps
        # them growing across restarts of the single writer of an item, and stays below
        # 2**53, where Redis's Lua numbers (doubles) stop comparing exactly.
        self._version = max(self._version + 1, time.time_ns() // 1000)
        started = time.perf_counter()
        try:
            written = await self.store.put_vectors(
                items=items, users=users, version=self._version, item_versions=versions
            )
        except Exception as exc:  # Redis is a rebuildable copy: count, keep, retry.
            # Anything submitted while we awaited is newer and wins over the retry.
            # Versions too, except for items resubmitted meanwhile (theirs are newer).
            restored = {i: v for i, v in versions.items() if i not in self._items}
            self._item_versions = {**restored, **self._item_versions}
            self._items = {**items, **self._items}
            self._users = {**users, **self._users}
            self._clicked_at = {**clicked_at, **self._clicked_at}
            self.link.failed(exc, self.pending)
            return 0
        self.metrics.redis_write_seconds.observe(time.perf_counter() - started)
        self.link.succeeded()
        version = self._version
        for user_id, vector in users.items():
            self.written_users[user_id] = (_to_bytes(vector), version)
        now = time.time()
        freshness = self.metrics.vector_freshness.labels(store="redis")
        for item_id in items:
            if item_id in clicked_at:
                freshness.observe(max(0.0, now - clicked_at[item_id]))
        return written

    async def write_all_users(self, chunk: int = 2000) -> int:
        """Write every user vector in `written_users` again, each with the version it
        was written with (a newer one in Redis stays); returns how many were written.
        Raises what Redis raises."""
        written = 0
        users = list(self.written_users.items())  # flushes may add users meanwhile
        for start in range(0, len(users), chunk):
            batch = users[start : start + chunk]
            written += await self.store.put_vectors(
                items={},
                users={user_id: np.frombuffer(raw, dtype="<f4") for user_id, (raw, _) in batch},
                version=0,
                user_versions={user_id: version for user_id, (_, version) in batch},
            )
            await asyncio.sleep(0)  # let clicks through between chunks
        return written

    def forget_users(self, user_ids: Iterable[str]) -> None:
        """Stop remembering these users' vectors (evicted, or now another worker's)."""
        for user_id in user_ids:
            self.written_users.pop(user_id, None)

    def keep_users(self, keep: Callable[[str], bool]) -> None:
        """Forget every remembered user for whom `keep` is false (after a rebalance)."""
        self.written_users = {u: w for u, w in self.written_users.items() if keep(u)}


def _to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()
