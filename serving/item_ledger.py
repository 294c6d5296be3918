"""One writer per item vector: the bookkeeping behind multi-worker item representations.

A click is applied by the worker that owns its *user*, and the model there changes the
clicked items' vectors at once (so that user's next recommendation reflects it). The
*item* vectors, though, must have one writer each and be the same in every worker. So:

1. The user's worker records each change it made to an item vector as a delta
   (`DeltaTracker.record`) and, every few milliseconds, sends the summed deltas to the
   item's owner: the worker that owns the item id's partition (`DeltaTracker.drain`).
2. The owner adds each delta to the item's canonical vector exactly once
   (`ItemLedger.apply`: a delta carries its origin's sequence number, and the ledger
   remembers the last one applied per origin, so a redelivered delta is skipped), gives
   it a new version, writes Redis and broadcasts the vector to every worker.
3. Every worker keeps the canonical vectors it hears (`ItemLedger.observe`) and copies
   one into its model and index when it has no change of its own still on the way for
   that item (`DeltaTracker.may_overwrite`); otherwise a later broadcast, which includes
   its change, will do. Once the stream drains, every worker holds the owner's vectors.

Deltas add, so concurrent learning on one item from two workers is summed, never lost
to a last-writer-wins race. Pure Python and NumPy; no I/O, not thread-safe (the worker
calls it from its event loop).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

# Origins (worker incarnations) remembered per item. A restarted worker is a new origin;
# forgetting the oldest ones only matters if a dead incarnation's deltas are replayed
# after 16 newer incarnations changed the same item.
MAX_ORIGINS_PER_ITEM = 16


@dataclass(frozen=True, slots=True)
class ItemDelta:
    """A change one origin made to an item vector since its last delta for that item.

    `latest` is the origin's vector after the change: an owner that has never seen the
    item (new, or created on another worker) starts from it instead of adding `delta`.
    `clicked_at` is the earliest click behind the change (for freshness), or None.
    """

    item_id: str
    origin: str
    seq: int
    delta: np.ndarray
    latest: np.ndarray
    clicked_at: float | None = None


@dataclass(frozen=True, slots=True)
class CanonicalVector:
    """The owner's vector of an item, its version, and the last sequence number applied
    from each origin (so a worker can tell whether its own changes are included)."""

    item_id: str
    vector: np.ndarray
    version: int
    applied: Mapping[str, int] = field(default_factory=dict)
    clicked_at: float | None = None


class DeltaTracker:
    """The user-owning side: sums this worker's changes per item until they are sent."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self._seq = 0
        self._pending: dict[str, list] = {}  # item -> [delta, latest, clicked_at]
        self._sent: dict[str, int] = {}  # item -> last seq sent and not yet seen back

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(
        self,
        item_id: str,
        before: np.ndarray | None,
        after: np.ndarray,
        clicked_at: float | None = None,
    ) -> None:
        """Note that this worker changed `item_id` from `before` (None: it created the
        item) to `after`. Never blocks."""
        after = np.array(after, dtype=np.float32)
        change = np.zeros_like(after) if before is None else after - before
        entry = self._pending.get(item_id)
        if entry is None:
            self._pending[item_id] = [change, after, clicked_at]
            return
        entry[0] = entry[0] + change
        entry[1] = after
        if entry[2] is None:
            entry[2] = clicked_at

    def drain(self) -> list[ItemDelta]:
        """Everything pending as deltas, each with the next sequence number; clears it."""
        deltas = []
        for item_id, (change, latest, clicked_at) in self._pending.items():
            self._seq += 1
            self._sent[item_id] = self._seq
            deltas.append(ItemDelta(item_id, self.origin, self._seq, change, latest, clicked_at))
        self._pending = {}
        return deltas

    def may_overwrite(self, canonical: CanonicalVector) -> bool:
        """True when `canonical` already includes every change this worker made to the
        item, so copying it into the local model loses nothing."""
        if canonical.item_id in self._pending:
            return False
        sent = self._sent.get(canonical.item_id)
        if sent is None:
            return True
        if canonical.applied.get(self.origin, 0) >= sent:
            del self._sent[canonical.item_id]
            return True
        return False


class ItemLedger:
    """Canonical item vectors as this worker knows them; `apply` is the owner's write."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._entries: dict[str, CanonicalVector] = {}
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._entries

    def get(self, item_id: str) -> CanonicalVector | None:
        return self._entries.get(item_id)

    def __iter__(self) -> Iterator[CanonicalVector]:
        return iter(list(self._entries.values()))

    def apply(self, delta: ItemDelta) -> CanonicalVector | None:
        """Add one delta to the item's canonical vector, once: returns the new entry, or
        None when this origin's delta with this sequence number was already applied."""
        current = self._entries.get(delta.item_id)
        applied = dict(current.applied) if current else {}
        if delta.seq <= applied.get(delta.origin, 0):
            self.duplicates += 1
            return None
        if current is None:
            vector = np.array(delta.latest, dtype=np.float32)
            version = 0
        else:
            vector = current.vector + delta.delta
            version = current.version
        applied[delta.origin] = delta.seq
        while len(applied) > MAX_ORIGINS_PER_ITEM:
            del applied[min(applied, key=applied.__getitem__)]
        # A microsecond clock keeps versions growing across owners and restarts, and
        # below 2**53 (Redis compares them as Lua doubles).
        version = max(version + 1, int(self._clock() * 1_000_000))
        entry = CanonicalVector(delta.item_id, vector, version, applied, delta.clicked_at)
        self._entries[delta.item_id] = entry
        return entry

    def observe(self, canonical: CanonicalVector) -> bool:
        """Take a broadcast vector if it is newer than the one known; True if taken."""
        current = self._entries.get(canonical.item_id)
        if current is not None and canonical.version <= current.version:
            return False
        self._entries[canonical.item_id] = canonical
        return True


__all__ = ["CanonicalVector", "DeltaTracker", "ItemDelta", "ItemLedger"]
