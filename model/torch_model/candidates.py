"""Array helpers for the ranker's candidate blocks: the evidence of many users at once.

A block keys what belongs to user u (0-based within the block) and item row r as
`u * n + r`, n being the number of rows the encoder knows, so one sorted int64 array
holds every user's sparse vector and one `np.searchsorted` looks a feature up for every
candidate of every user. The arithmetic per user is what a per-user loop would do in
the same order (sums are added in the same sequence), so a block of many users ranks
each exactly as a block of one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from model.transitions import TransitionMemory

if TYPE_CHECKING:
    from model.torch_model.encoder import GruEncoder

NO_ROWS = np.empty(0, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class Successors:
    """One item's successors in a memory, over the rows the encoder knows: `rows` in
    the memory's own order, which is the order candidates are gathered in, with
    `weights`, P(row | item). A row occurs once, so sums over several items' successors
    do not depend on the order within one."""

    rows: np.ndarray
    weights: np.ndarray


NO_SUCCESSORS = Successors(NO_ROWS, np.empty(0))


class SuccessorCache:
    """Each item's `Successors` in `memory` over `encoder`'s rows, built on demand and
    kept until `forget`: derived data, never state.

    A click changes every weight of the items it counts from but rarely their ids, so
    each item's ids mapped to rows are kept across `forget` and only the ids added since
    are mapped. That holds while the memory's dict of the item is the same object (its
    keys then only grow, in insertion order; a prune or a load makes a new dict) and
    the encoder's row map is the same object (rows are then only added)."""

    def __init__(self, memory: TransitionMemory, encoder: GruEncoder) -> None:
        self.memory = memory
        self.encoder = encoder
        self._cache: dict[str, Successors] = {}
        # Per item: the memory's dict its rows were mapped from, one row per key of it
        # in its order (-1: an id the encoder did not know then), and whether every
        # id was known.
        self._mapped: dict[str, tuple[Mapping[str, float], np.ndarray, bool]] = {}
        self._mapped_with = encoder.rows

    def get(self, item: str) -> Successors:
        cached = self._cache.get(item)
        if cached is None:
            cached = self._cache[item] = self._build(item)
        return cached

    def forget(self, items: Iterable[str]) -> None:
        for item in items:
            self._cache.pop(item, None)

    def _build(self, item: str) -> Successors:
        weights, total = self.memory.weights(item)
        if not weights:
            return NO_SUCCESSORS
        rows, every_known = self._rows(item, weights)
        # weight / total in float64, as `TransitionMemory.successors` divides.
        probabilities = np.fromiter(weights.values(), np.float64, len(weights)) / total
        if every_known:
            return Successors(rows, probabilities)
        known = rows >= 0
        if not known.any():
            return NO_SUCCESSORS
        return Successors(rows[known], probabilities[known])

    def _rows(self, item: str, weights: Mapping[str, float]) -> tuple[np.ndarray, bool]:
        """The encoder row of each key of `weights`, in its order (-1 for unknown ids),
        and whether every id is known."""
        rows_of = self.encoder.rows
        if rows_of is not self._mapped_with:
            self._mapped.clear()
            self._mapped_with = rows_of
        mapped = self._mapped.get(item)
        if mapped is None or mapped[0] is not weights:
            added = [rows_of.get(j, -1) for j in weights]
            rows, every_known = np.array(added, dtype=np.int64), -1 not in added
        else:
            _, rows, every_known = mapped
            if len(weights) > len(rows):
                added = [rows_of.get(j, -1) for j in itertools.islice(weights, len(rows), None)]
                rows = np.concatenate([rows, np.array(added, dtype=np.int64)])
                every_known = every_known and -1 not in added
            if not every_known:  # ids the encoder may have learned since
                rows, every_known = _remapped(rows, list(weights), rows_of)
        self._mapped[item] = (weights, rows, every_known)
        return rows, every_known


def _remapped(
    rows: np.ndarray, ids: list[str], rows_of: Mapping[str, int]
) -> tuple[np.ndarray, bool]:
    """`rows` (for `ids`) with its unknown ids looked up again, and whether every one
    is now known."""
    unknown = np.flatnonzero(rows < 0)
    found = [rows_of.get(ids[at], -1) for at in unknown.tolist()]
    rows = rows.copy()
    rows[unknown] = found
    return rows, -1 not in found


class RowMap:
    """For each row of a target id list, the row of the same id in a source list (-1
    where the source lacks it): the encoder's candidate rows as popularity rows.

    Kept current from what was added since the last call, which holds while both
    lists are the objects seen then, since ids are only appended to them; a list
    replaced (a load) maps everything again. Derived data, never state."""

    def __init__(self) -> None:
        self._rows = NO_ROWS
        self._lists: tuple[Sequence[str], Sequence[str]] | None = None
        self._mapped = (0, 0)  # target rows, source rows mapped

    def rows(
        self,
        target: Sequence[str],
        target_rows: Mapping[str, int],
        source: Sequence[str],
        source_rows: Mapping[str, int],
    ) -> np.ndarray:
        """The map over every row of `target` (with `target_rows` its inverse) into
        `source` (with `source_rows`)."""
        if self._lists is None or self._lists[0] is not target or self._lists[1] is not source:
            self._lists, self._mapped, self._rows = (target, source), (0, 0), NO_ROWS
        mapped_target, mapped_source = self._mapped
        if len(target) > mapped_target:
            added = [source_rows.get(i, -1) for i in itertools.islice(target, mapped_target, None)]
            self._rows = np.concatenate([self._rows, np.array(added, dtype=np.int64)])
        # A source id added since may name a target row mapped before it existed.
        for row in range(mapped_source if mapped_target else len(source), len(source)):
            at = target_rows.get(source[row])
            if at is not None and at < mapped_target:
                self._rows[at] = row
        self._mapped = (len(target), len(source))
        return self._rows


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
    by_key = _by_key(keys)
    if by_key is None:
        unique, slots = np.unique(keys, return_inverse=True)
        return KeyedSparse(unique, np.bincount(slots, weights, minlength=len(unique)))
    sorted_keys, positions, starts = by_key
    # Within a key the positions ascend, so each key's weights are still added in
    # input order.
    slots = np.cumsum(starts) - 1
    return KeyedSparse(sorted_keys[starts], np.bincount(slots, weights[positions]))


def best_per_user(sparse: KeyedSparse, n: int, users: int, k: int) -> list[np.ndarray]:
    """For each user, the rows of its k largest positive values, largest first and
    ties by row."""
    if k <= 0 or not len(sparse.keys):
        return [NO_ROWS] * users
    # The others would rank after every positive value, so dropping them first
    # changes no rank.
    positive = sparse.values > 0
    keys, values = sparse.keys[positive], sparse.values[positive]
    user = keys // n
    kept = _at_least_kth(user, values, users, k)
    if kept is not None:
        keys, values, user = keys[kept], values[kept], user[kept]
    order = _by_user_then_value(user, values, users)
    user_sorted = user[order]
    starts = np.searchsorted(user_sorted, np.arange(users + 1))
    rank = np.arange(len(order)) - starts[user_sorted]
    keep = order[rank < k]
    kept_user = user[keep]
    bounds = np.searchsorted(kept_user, np.arange(users + 1))
    rows = keys[keep] - kept_user * n
    return [rows[bounds[u] : bounds[u + 1]] for u in range(users)]


_KTH_GRID_CELLS = 1 << 23  # 64 MB of float64 at most for `_at_least_kth`'s grid


def _at_least_kth(user: np.ndarray, values: np.ndarray, users: int, k: int) -> np.ndarray | None:
    """A mask of the entries (grouped by user, ascending) whose value is at least their
    user's k-th largest: the others rank past k whatever the ties, so ranking only the
    kept ones gives the same top k, several times cheaper than ranking every entry.
    None when no user has more than k entries (or the grid would be too large)."""
    counts = np.bincount(user, minlength=users)
    widest = int(counts.max()) if len(counts) else 0
    if widest <= k or users * widest > _KTH_GRID_CELLS:
        return None
    # One row per user, its values then -inf padding; the k-th largest of each row
    # is -inf for a user with fewer than k entries, which keeps all of them.
    column = np.arange(len(user)) - (np.cumsum(counts) - counts)[user]
    grid = np.full((users, widest), -np.inf)
    grid[user, column] = values
    kth = np.partition(grid, widest - k, axis=1)[:, widest - k]
    kept: np.ndarray = values >= kth[user]
    return kept


def _by_user_then_value(user: np.ndarray, values: np.ndarray, users: int) -> np.ndarray:
    """The order by user, then value (largest first), then position, of entries given
    in ascending key order (so position breaks ties by row within a user).

    Each value is replaced by its rank among the distinct values, so one plain sort of
    the distinct int64s (user, rank from the top, position) gives the order: an
    unstable sort of ranks plus one of values, several times cheaper than stable sorts
    of floats."""
    size = len(values)
    _, rank = np.unique(values, return_inverse=True)  # 0 for the smallest value
    distinct = int(rank.max()) + 1 if size else 1
    if users * distinct * size >= 1 << 62:  # would overflow int64
        return _by_user_then_value_stable(user, values, users)
    composite = (user * distinct + (distinct - 1 - rank)) * size + np.arange(size)
    composite.sort()
    positions: np.ndarray = composite % size
    return positions


def _by_user_then_value_stable(user: np.ndarray, values: np.ndarray, users: int) -> np.ndarray:
    """`_by_user_then_value` by a stable sort by value, then a stable sort by user,
    which keeps that order within each user."""
    by_value = np.argsort(-values, kind="stable")
    user_by_value = user[by_value]
    if users <= 1 << 16:  # sorted by radix, in linear time
        user_by_value = user_by_value.astype(np.uint16)
    by_user: np.ndarray = by_value[np.argsort(user_by_value, kind="stable")]
    return by_user


def first_in_order(user: np.ndarray, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(user, rows) with each (user, row) pair kept at its first occurrence only, in the
    order given. Negative rows (unknown items) are dropped."""
    known = rows >= 0
    user, rows = user[known], rows[known]
    first = _first_positions(user * n + rows)
    return user[first], rows[first]


def _first_positions(keys: np.ndarray) -> np.ndarray:
    """The position of each distinct non-negative key's first occurrence, ascending."""
    by_key = _by_key(keys)
    if by_key is None:
        _, first = np.unique(keys, return_index=True)
    else:
        _, positions, starts = by_key
        first = positions[starts]
    first.sort()
    return first


def _by_key(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Non-negative `keys` sorted, the position each came from, and where each distinct
    key starts; ties by position, as a stable argsort orders them. None when the keys
    are too large for the method (the caller takes np.unique's).

    Sorts key * len + position, which are distinct, so a plain (unstable) sort of
    values does it: several times cheaper than a stable argsort."""
    size = len(keys)
    if not size or (int(keys.max()) + 1) * size >= 1 << 62:  # would overflow int64
        return None
    composite = keys * size + np.arange(size)
    composite.sort()
    sorted_keys = composite // size
    positions = composite - sorted_keys * size
    starts = np.empty(size, dtype=bool)
    starts[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=starts[1:])
    return sorted_keys, positions, starts
