"""Which user contexts a worker keeps: the policy that bounds its memory (issue #6).

A worker's memory grows with the users it has seen: each user record in the table is
about 1.8 kB after one click and up to 5 kB after 128 with the torch model (its GRU
state is 130 floats in JSON, plus the dedup window of event ids), 0.2-2.3 kB with the
baselines, plus about 90 bytes of table overhead and about 200 bytes here. Items cost
about 3 kB each with the torch model (embeddings, FAISS, ledger) plus about 160 bytes
per kept transition count (at most 200 per item, model/transitions.py): bounded by the
catalogue, not by traffic. So users are what must be evicted. `UserRetention` decides
which:

- `max_users`: past it, the least recently active users are evicted (LRU by the order
  the worker applied their clicks);
- `idle_s`: a user whose last click is more than `idle_s` seconds of *event time*
  older than the newest click this worker has applied is evicted. Event time, not wall
  time, so a replay of the same events evicts the same users (wall time would make the
  outcome depend on how fast the replay ran); the head of the LRU order is checked, so
  idle users leave in the order they were last active;
- memory pressure (`note_resident`): when the process's resident size passes the cap
  and has grown since the last reduction, the cap is lowered to 90% of the users held.
  Never raised again: freed records are reused by Python's allocator, but resident size
  rarely shrinks, so a loop that waited for it to fall would evict everyone.

Eviction drops the user's dedup window, so it must never race a redelivery. Faust
re-delivers only records past the committed offset, and commits every
`broker_commit_interval` (2.8 s by default); a user is therefore evicted only once
`safe_after_s` (three commit intervals) of wall time have passed since their last
click was applied. An evicted user's clicks are all committed: none comes back from
the log, and the one that comes next starts from a cold context. What remains is a
producer that re-sends an old click later than that (a retry long after the fact); the
cap and `idle_s` should be far larger than the traffic of such a horizon.

Pure bookkeeping, no I/O: the worker deletes the returned keys from its table (which
writes a changelog tombstone, so a restarted worker does not resurrect them). Not
thread-safe; the worker calls it from its event loop.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from pathlib import Path

from stream.metrics import EVICTION_REASONS

# When the resident size passes the memory cap, keep this share of the users held.
MEMORY_SHRINK = 0.9


@dataclass(frozen=True, slots=True)
class Eviction:
    key: bytes
    reason: str  # one of stream.metrics.EVICTION_REASONS


class UserRetention:
    """LRU order of the users a worker holds, with their last event and wall times.

    `max_users` 0 means no count cap and `idle_s` 0 no idle eviction; `memory_cap_bytes`
    0 turns `note_resident` off.

    >>> clock = [0.0]
    >>> retention = UserRetention(max_users=2, safe_after_s=5, clock=lambda: clock[0])
    >>> for n, user in enumerate([b"a", b"b", b"c"]):
    ...     retention.touch(user, event_time=float(n))
    >>> list(retention.due())  # over the cap, but "a" was active too recently
    []
    >>> clock[0] = 10.0
    >>> [(e.key, e.reason) for e in retention.due()]
    [(b'a', 'cap')]
    """

    def __init__(
        self,
        max_users: int = 0,
        idle_s: float = 0.0,
        *,
        safe_after_s: float,
        memory_cap_bytes: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_users < 0 or idle_s < 0 or safe_after_s < 0 or memory_cap_bytes < 0:
            raise ValueError("max_users, idle_s, safe_after_s and memory_cap_bytes must be >= 0")
        self.max_users = max_users
        self.idle_s = float(idle_s)
        self.safe_after_s = float(safe_after_s)
        self.memory_cap_bytes = memory_cap_bytes
        self._clock = clock
        # key -> (last event time, wall clock when it was applied), least recent first.
        self._users: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        self._newest_event = float("-inf")
        self._resident_at_shrink = 0

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, key: object) -> bool:
        return key in self._users

    @property
    def cap(self) -> int:
        """The count cap in force (0: none); memory pressure may have lowered it."""
        return self.max_users

    def touch(self, key: bytes, event_time: float) -> None:
        """`key`'s click at `event_time` was just applied: it is now the most recent."""
        self._users[key] = (event_time, self._clock())
        self._users.move_to_end(key)
        if event_time > self._newest_event:
            self._newest_event = event_time

    def adopt(self, key: bytes, event_time: float) -> None:
        """A user found in the table (recovered from the changelog) but not yet tracked:
        tracked as least recent among those adopted with later `event_time`s, protected
        by `safe_after_s` like a click applied now (it may be one a restart replays)."""
        if key not in self._users:
            self.touch(key, event_time)

    def forget(self, key: bytes) -> None:
        """Stop tracking `key` without evicting it (its partition moved elsewhere)."""
        self._users.pop(key, None)

    def due(
        self, owned: Callable[[bytes], bool] = lambda key: True, busy: Container[bytes] = ()
    ) -> Iterator[Eviction]:
        """Users to evict now, least recently active first; each is forgotten as it is
        returned. Keys `owned` rejects (another worker's partition now) are forgotten,
        not returned. Stops at the first user applied less than `safe_after_s` ago or
        in `busy` (its record not yet written), since every later one is more recent."""
        now = self._clock()
        horizon = self._newest_event - self.idle_s
        while self._users:
            key, (event_time, applied_at) = next(iter(self._users.items()))
            if not owned(key):
                del self._users[key]
                continue
            if self.max_users and len(self._users) > self.max_users:
                reason = "memory" if self._resident_at_shrink else "cap"
            elif self.idle_s and event_time < horizon:
                reason = "idle"
            else:
                return
            if now - applied_at < self.safe_after_s or key in busy:
                return
            del self._users[key]
            yield Eviction(key, reason)

    def note_resident(self, resident_bytes: int | None) -> bool:
        """The process's resident size now; past the memory cap and grown since the last
        time it was, the user cap drops to 90% of the users held. True if it dropped."""
        if not self.memory_cap_bytes or resident_bytes is None:
            return False
        if resident_bytes <= self.memory_cap_bytes or resident_bytes <= self._resident_at_shrink:
            return False
        lowered = max(1, int(len(self._users) * MEMORY_SHRINK))
        if self.max_users and lowered >= self.max_users:
            return False
        self.max_users = lowered
        self._resident_at_shrink = resident_bytes
        return True


def resident_bytes(statm: Path = Path("/proc/self/statm")) -> int | None:
    """This process's resident set size, or None where /proc is not available (the
    memory cap is then not enforced; the worker says so at start)."""
    try:
        resident_pages = int(statm.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


__all__ = ["EVICTION_REASONS", "Eviction", "UserRetention", "resident_bytes"]
