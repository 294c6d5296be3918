"""The candidate blocks' array helpers against the plain computations they replace."""

from __future__ import annotations

import random

import numpy as np
import pytest

from model.baselines import RecentPopularity
from model.torch_model import candidates
from model.torch_model.candidates import (
    KeyedSparse,
    RowMap,
    SuccessorCache,
    Successors,
    _by_user_then_value,
    _by_user_then_value_stable,
    best_per_user,
    first_in_order,
    in_order,
    summed,
)
from model.torch_model.encoder import GruEncoder
from model.transitions import TransitionMemory


def _encoder() -> GruEncoder:
    return GruEncoder(dim=4, seed=0, lr=0.1, negatives=2, init_std=0.1, context_lr=0.01)


def _expected(memory: TransitionMemory, encoder: GruEncoder, item: str) -> list[tuple[int, float]]:
    """What the cache must hold for `item`: the known successors in the memory's order."""
    return [(encoder.rows[j], p) for j, p in memory.successors(item).items() if j in encoder.rows]


def test_the_cache_follows_the_memory_through_forgets_prunes_and_new_rows() -> None:
    # Few neighbours, so dicts are pruned often; ids join the encoder late, so some
    # successors are unknown when first mapped and known when mapped again.
    memory = TransitionMemory(window=3, max_neighbours=4)
    encoder = _encoder()
    cache = SuccessorCache(memory, encoder)
    rng = random.Random(7)
    recent: list[str] = []
    items = [f"i{n}" for n in range(30)]
    for step in range(600):
        item = rng.choice(items)
        memory.observe(recent, item, same_session=True)
        cache.forget((*recent[-3:], item))
        if step % 3 == 0 and item not in encoder.rows:
            encoder.row(item)
            # A cached item is only rebuilt once forgotten; the ids mapped are kept.
            cache.forget(items)
        recent = (recent + [item])[-10:]
        for probe in rng.sample(items, 5):
            successors = cache.get(probe)
            got = list(zip(successors.rows.tolist(), successors.weights.tolist(), strict=True))
            assert got == _expected(memory, encoder, probe)


def test_the_row_map_follows_both_lists_as_they_grow_and_when_one_is_replaced() -> None:
    # Popularity rows for the encoder's rows: each side learns ids the other has not
    # seen yet, and a load replaces a side's list.
    encoder, popularity = _encoder(), RecentPopularity()
    row_map = RowMap()
    rng = random.Random(3)
    items = [f"i{n}" for n in range(40)]
    for step in range(400):
        item = rng.choice(items)
        if rng.random() < 0.5:
            encoder.row(item)
        else:
            popularity.observe(item, float(step))
        if step == 200:
            popularity.load_state_dict(popularity.state_dict())
        if step == 300:
            encoder.load_state_dict(encoder.state_dict())
        got = row_map.rows(encoder.ids, encoder.rows, popularity.ids, popularity.rows)
        assert got.tolist() == [popularity.rows.get(i, -1) for i in encoder.ids]


def test_popularity_shares_by_row_are_the_shares_by_id() -> None:
    # Through new items, rescales of every count (a half-life of 1 s over 300 s of
    # event time) and a load.
    popularity = RecentPopularity(half_life_s=1.0)
    rng = random.Random(4)
    ids = [f"i{n}" for n in range(50)] + ["never-clicked"]
    assert popularity.shares_at(np.array([-1, -1])).tolist() == [0.0, 0.0]
    for step in range(600):
        popularity.observe(f"i{min(rng.randrange(50), rng.randrange(50))}", step / 2)
        if step == 400:
            popularity.load_state_dict(popularity.state_dict())
        rows = np.array([popularity.rows.get(i, -1) for i in ids], dtype=np.int64)
        assert popularity.shares_at(rows).tolist() == popularity.shares(ids).tolist()


def test_in_order_is_a_lookup_in_the_keys_own_order() -> None:
    rng = np.random.default_rng(3)
    sparse_keys = np.unique(rng.integers(0, 1000, 300))
    sparse = KeyedSparse(sparse_keys, rng.random(len(sparse_keys)))
    keys = rng.permutation(1000)[:200]
    order = np.argsort(keys)
    assert np.array_equal(in_order(sparse, keys[order], order), sparse.lookup(keys))


@pytest.mark.parametrize("grid_cells", [candidates._KTH_GRID_CELLS, 0])
def test_best_per_user_is_each_users_sort_by_value_then_row(
    grid_cells: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the k-th value prefilter and without it (0: no grid is small enough)."""
    monkeypatch.setattr(candidates, "_KTH_GRID_CELLS", grid_cells)
    rng = np.random.default_rng(5)
    for _ in range(100):
        users, n, k = int(rng.integers(1, 12)), 40, int(rng.integers(1, 8))
        keys = np.unique(rng.integers(0, users * n, int(rng.integers(1, 300))))
        # Many ties, and values that must never be proposed.
        values = rng.choice([-1.0, 0.0, 1e-300, 0.25, 0.5, 1.0], len(keys))
        best = best_per_user(KeyedSparse(keys, values), n, users, k)
        for u in range(users):
            pairs = zip(keys.tolist(), values.tolist(), strict=True)
            mine = [(-v, key - u * n) for key, v in pairs if key // n == u]
            expected = [row for minus, row in sorted(mine) if minus < 0][:k]
            assert best[u].tolist() == expected


def test_first_in_order_keeps_each_pair_where_it_first_occurs() -> None:
    rng = np.random.default_rng(9)
    # A huge n takes the path for keys too large to combine with positions.
    for size, n in [(0, 12), (1, 12), (2, 12), (50, 12), (400, 12), (50, 1 << 58)]:
        user = np.sort(rng.integers(0, 5, size))
        rows = rng.integers(-1, 12, size)
        kept_user, kept_rows = first_in_order(user, rows, n)
        seen: set[tuple[int, int]] = set()
        expected = []
        for pair in zip(user.tolist(), rows.tolist(), strict=True):
            if pair[1] >= 0 and pair not in seen:
                seen.add(pair)
                expected.append(pair)
        assert list(zip(kept_user.tolist(), kept_rows.tolist(), strict=True)) == expected


def test_summed_adds_each_keys_weights_in_the_order_of_the_parts() -> None:
    rng = np.random.default_rng(11)
    parts = []
    for _ in range(30):
        rows = rng.permutation(20)[: int(rng.integers(1, 20))]
        parts.append(Successors(rows, rng.random(len(rows))))
    offsets = [int(offset) for offset in rng.integers(0, 3, len(parts)) * 20]
    scales = rng.random(len(parts)).tolist()
    expected: dict[int, float] = {}
    for part, offset, scale in zip(parts, offsets, scales, strict=True):
        for row, weight in zip(part.rows.tolist(), part.weights.tolist(), strict=True):
            expected[offset + row] = expected.get(offset + row, 0.0) + weight * scale
    got = summed(parts, offsets, scales)
    assert got.keys.tolist() == sorted(expected)
    assert got.values.tolist() == [expected[key] for key in sorted(expected)]


def test_both_orders_by_user_then_value_agree() -> None:
    # The stable-sort order is the fallback for blocks too large to rank in int64.
    rng = np.random.default_rng(13)
    for size in (1, 2, 300):
        users = 4
        user = np.sort(rng.integers(0, users, size))
        values = rng.choice([1e-300, 0.25, 0.5, 1.0, 3.0], size)
        fast = _by_user_then_value(user, values, users)
        assert np.array_equal(fast, _by_user_then_value_stable(user, values, users))
