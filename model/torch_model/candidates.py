"""Array helpers for the ranker's candidate blocks: the evidence of many users at once.

A block keys what belongs to user u (0-based within the block) and item row r as
`u * n + r`, n being the number of rows the encoder knows, so one sorted int64 array
holds every user's sparse vector and one `np.searchsorted` looks a feature up for every
candidate of every user. The arithmetic per user is what a per-user loop would do in
the same order (sums are added in the same sequence), so a block of many users ranks
each exactly as a block of one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from model.transitions import TransitionMemory

if TYPE_CHECKING:
    from model.torch_model.encoder import GruEncoder

NO_ROWS = np.empty(0, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class Successors:
    """One item's successors in a memory, over the rows the encoder knows: `rows`
    ascending with `weights` (P(row | item)) for lookups, and `ordered`, the same rows
    in the memory's own order, which is the order candidates are gathered in."""

    rows: np.ndarray
    weights: np.ndarray
    ordered: np.ndarray


NO_SUCCESSORS = Successors(NO_ROWS, np.empty(0), NO_ROWS)


class SuccessorCache:
    """Each item's `Successors` in `memory` over `encoder`'s rows, built on demand and
    kept until `forget`: derived data, never state."""

    def __init__(self, memory: TransitionMemory, encoder: GruEncoder) -> None:
        self.memory = memory
        self.encoder = encoder
        self._cache: dict[str, Successors] = {}

    def get(self, item: str) -> Successors:
        cached = self._cache.get(item)
        if cached is None:
            cached = self._cache[item] = self._build(item)
        return cached

    def _build(self, item: str) -> Successors:
        weights, total = self.memory.weights(item)
        if not weights:
            return NO_SUCCESSORS
        rows_of = self.encoder.rows
        rows = np.array([rows_of.get(j, -1) for j in weights], dtype=np.int64)
        known = rows >= 0
        if not known.any():
            return NO_SUCCESSORS
        # weight / total in float64, as `TransitionMemory.successors` divides.
        probabilities = np.fromiter(weights.values(), np.float64, len(weights)) / total
        ordered, probabilities = rows[known], probabilities[known]
        order = np.argsort(ordered)
        return Successors(ordered[order], probabilities[order], ordered)

    def forget(self, items: Iterable[str]) -> None:
        for item in items:
            self._cache.pop(item, None)


@dataclass(frozen=True, slots=True)
class KeyedSparse:
    """Sparse values over (user, row) keys `u * n + r`, keys ascending."""

    keys: np.ndarray
    values: np.ndarray

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key in `keys`; 0.0 where it holds none."""
        if not len(self.keys):
            return np.zeros(len(keys))
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found: np.ndarray = np.where(self.keys[at] == keys, self.values[at], 0.0)
        return found


def in_order(sparse: KeyedSparse, ascending: np.ndarray, order: np.ndarray) -> np.ndarray:
    """`sparse.lookup(keys)` for the keys whose ascending sort is `ascending`
    (`keys[order]`), in the keys' own order. Ascending keys are looked up several times
    faster: each binary search starts where the previous one ended."""
    values = np.empty(len(ascending))
    values[order] = sparse.lookup(ascending)
    return values


def summed(
    parts: list[Successors], offsets: list[int], scales: list[float] | None = None
) -> KeyedSparse:
    """The sum per key of every part's weights (times its scale, if given), keyed by
    the part's rows plus its offset. Each key's weights are added in the order of the
    parts (np.bincount adds in input order), as a per-user loop would add them."""
    if not parts:
        return KeyedSparse(NO_ROWS, np.empty(0))
    lengths = [len(part.rows) for part in parts]
    keys = np.concatenate([part.rows for part in parts])
    keys += np.repeat(np.array(offsets, dtype=np.int64), lengths)
    weights = np.concatenate([part.weights for part in parts])
    if scales is not None:
        weights *= np.repeat(np.array(scales), lengths)
    unique, slots = np.unique(keys, return_inverse=True)
    return KeyedSparse(unique, np.bincount(slots, weights, minlength=len(unique)))


def best_per_user(sparse: KeyedSparse, n: int, users: int, k: int) -> list[np.ndarray]:
    """For each user, the rows of its k largest positive values, largest first and
    ties by row."""
    if k <= 0 or not len(sparse.keys):
        return [NO_ROWS] * users
    user = sparse.keys // n
    # lexsort is stable and sorts by its last key first: user, then -value, then key
    # (the row, within a user).
    order = np.lexsort((sparse.keys, -sparse.values, user))
    user_sorted = user[order]
    starts = np.searchsorted(user_sorted, np.arange(users + 1))
    rank = np.arange(len(order)) - starts[user_sorted]
    keep = order[(rank < k) & (sparse.values[order] > 0)]
    kept_user = user[keep]
    bounds = np.searchsorted(kept_user, np.arange(users + 1))
    rows = sparse.keys[keep] - kept_user * n
    return [rows[bounds[u] : bounds[u + 1]] for u in range(users)]


def first_in_order(user: np.ndarray, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(user, rows) with each (user, row) pair kept at its first occurrence only, in the
    order given. Negative rows (unknown items) are dropped."""
    known = rows >= 0
    user, rows = user[known], rows[known]
    _, first = np.unique(user * n + rows, return_index=True)
    first.sort()
    return user[first], rows[first]
