"""One writer per item vector: the bookkeeping (`DeltaTracker` on the user's worker,
`ItemLedger` on every worker) of the protocol stream/items/__init__.py describes.

Pure Python and NumPy; no I/O, not thread-safe (the worker calls it from its event
loop).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

# Sources remembered per item: one per input topic-partition that applies clicks (the
# clicks topic and the by-user topic), so a handful; the cap only guards against a
# misconfiguration that would grow it without bound.
MAX_SOURCES_PER_ITEM = 1024


@dataclass(frozen=True, slots=True)
class ItemDelta:
    """The change one click made to one item vector.

    `source` names the input topic-partition the click was read from and `offset` its
    position there: the owner applies a delta only if that offset is past the last one
    it applied from that source for the item, so a click replayed after a crash changes
    the canonical vector once. `latest` is the vector after the change and `before`
    the one it changed (None for a new item): an owner whose vector is exactly
    `before`, or that has never seen the item, takes `latest` as it is; otherwise it
    adds `delta`. So a lone worker's canonical vectors equal its own bit for bit, and
    concurrent changes from several workers add up. `clicked_at` is the click's time
    (for freshness), or None.
    """

    item_id: str
    source: str
    offset: int
    delta: np.ndarray
    latest: np.ndarray
    clicked_at: float | None = None
    before: np.ndarray | None = None
    #: The model version (`Recommender.version`) whose vector space the delta is in:
    #: an owner running another model drops it (a live model swap, stream/worker/swap.py).
    model: str = ""


@dataclass(frozen=True, slots=True)
class CanonicalVector:
    """The owner's vector of an item, its version, the last offset applied from each
    source (so a worker can tell whether its own changes are included) and how many
    clicks' deltas it sums."""

    item_id: str
    vector: np.ndarray
    version: int
    applied: Mapping[str, int] = field(default_factory=dict)
    clicked_at: float | None = None
    events: int = 0
    model: str = ""  # the model version whose space the vector is in, as ItemDelta's


class DeltaTracker:
    """The user-owning side: the item changes of applied clicks until they are sent."""

    def __init__(self) -> None:
        self._pending: list[ItemDelta] = []
        self._pending_items: dict[str, int] = {}  # item -> deltas pending
        self._sent: dict[str, dict[str, int]] = {}  # item -> source -> last offset sent

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(
        self,
        item_id: str,
        before: np.ndarray | None,
        after: np.ndarray,
        *,
        source: str,
        offset: int,
        clicked_at: float | None = None,
        model: str = "",
    ) -> None:
        """Note that the click at `source`/`offset` changed `item_id` from `before`
        (None: it created the item) to `after`, in the vector space of `model` (its
        version). Never blocks."""
        after = np.array(after, dtype=np.float32)
        change = np.zeros_like(after) if before is None else after - before
        self._pending.append(
            ItemDelta(item_id, source, offset, change, after, clicked_at, before, model)
        )
        self._pending_items[item_id] = self._pending_items.get(item_id, 0) + 1

    def drain(self) -> list[ItemDelta]:
        """Every pending delta, in the order recorded; clears them."""
        deltas, self._pending, self._pending_items = self._pending, [], {}
        for delta in deltas:
            sent = self._sent.setdefault(delta.item_id, {})
            sent[delta.source] = max(sent.get(delta.source, -1), delta.offset)
        return deltas

    def may_overwrite(self, canonical: CanonicalVector) -> bool:
        """True when `canonical` already includes every change this worker made to the
        item, so copying it into the local model loses nothing."""
        if canonical.item_id in self._pending_items:
            return False
        sent = self._sent.get(canonical.item_id)
        if sent is None:
            return True
        if all(canonical.applied.get(src, -1) >= offset for src, offset in sent.items()):
            del self._sent[canonical.item_id]
            return True
        return False


def same_model(a: str, b: str) -> bool:
    """Whether two model tags name one vector space ("" is a record from before the
    tags, taken as the current model's)."""
    return not a or not b or a == b


class ItemLedger:
    """Canonical item vectors as this worker knows them; `apply` is the owner's write.

    `model` is the version of the model this worker runs: a delta or a broadcast vector
    of another model's space is dropped, and an entry of another model is no base for
    a delta (the delta's own vector is taken, with a version past the entry's), so a
    live model swap starts every item's canonical vector afresh in the new space."""

    def __init__(self, clock: Callable[[], float] = time.time, model: str = "") -> None:
        self._clock = clock
        self._entries: dict[str, CanonicalVector] = {}
        self.duplicates = 0
        self.model = model
        self.other_model = 0  # deltas and broadcasts dropped as another model's

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._entries

    def get(self, item_id: str) -> CanonicalVector | None:
        return self._entries.get(item_id)

    def __iter__(self) -> Iterator[CanonicalVector]:
        return iter(list(self._entries.values()))

    def apply(self, delta: ItemDelta) -> CanonicalVector | None:
        """Add one click's delta to the item's canonical vector, once: returns the new
        entry, or None when a delta from that source at or past that offset was
        already applied (a replay)."""
        if not same_model(delta.model, self.model):
            self.other_model += 1
            return None
        current = self._entries.get(delta.item_id)
        applied = dict(current.applied) if current else {}
        if delta.offset <= applied.get(delta.source, -1):
            self.duplicates += 1
            return None
        # Another model's entry is no base: its vector is in another space.
        base = current if current is not None and same_model(current.model, self.model) else None
        if base is None or (delta.before is not None and np.array_equal(base.vector, delta.before)):
            vector = np.array(delta.latest, dtype=np.float32)
        else:
            vector = base.vector + delta.delta
        version, events = (current.version, current.events) if current else (0, 0)
        applied[delta.source] = delta.offset
        while len(applied) > MAX_SOURCES_PER_ITEM:
            del applied[min(applied, key=applied.__getitem__)]
        # A microsecond clock keeps versions growing across owners and restarts, and
        # below 2**53 (Redis compares them as Lua doubles).
        version = max(version + 1, int(self._clock() * 1_000_000))
        entry = CanonicalVector(
            delta.item_id, vector, version, applied, delta.clicked_at, events + 1, self.model
        )
        self._entries[delta.item_id] = entry
        return entry

    def observe(self, canonical: CanonicalVector) -> bool:
        """Take a broadcast vector if it is newer than the one known and of this
        worker's model; True if taken."""
        if not same_model(canonical.model, self.model):
            self.other_model += 1
            return False
        current = self._entries.get(canonical.item_id)
        if current is not None and canonical.version <= current.version:
            return False
        self._entries[canonical.item_id] = canonical
        return True


__all__ = ["CanonicalVector", "DeltaTracker", "ItemDelta", "ItemLedger", "same_model"]
