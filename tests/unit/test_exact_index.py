"""ExactIndex: known answers, then properties against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from model import ExactIndex, ItemIndex


def vectors(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def ids_of(results) -> list[str]:
    return [s.item_id for s in results]


def test_satisfies_the_item_index_port():
    assert isinstance(ExactIndex(4), ItemIndex)


def test_upsert_replaces_in_place():
    index = ExactIndex(2)
    index.upsert(["a", "b"], vectors([1, 0], [0, 1]))
    index.upsert(["a"], vectors([0, 5]))
    assert len(index) == 2
    # "a" now points along y with norm 5, so it beats "b" on the y query.
    assert ids_of(index.search(vectors([0, 1])[0], k=2)) == ["a", "b"]
    np.testing.assert_array_equal(index.vector("a"), [0, 5])


def test_empty_index_and_nonpositive_k_return_nothing():
    index = ExactIndex(3)
    assert index.search(np.ones(3, dtype=np.float32), k=5) == []
    index.upsert(["a"], vectors([1, 1, 1]))
    assert index.search(np.ones(3, dtype=np.float32), k=0) == []


def test_grows_past_its_initial_capacity():
    index = ExactIndex(2, capacity=2)
    ids = [f"i{j}" for j in range(9)]
    index.upsert(ids, np.arange(18, dtype=np.float32).reshape(9, 2))
    assert len(index) == 9
    # Scores are 0*x + 1*y: the last inserted row has the largest y.
    assert ids_of(index.search(vectors([0, 1])[0], k=3)) == ["i8", "i7", "i6"]


def test_exclusions_reach_past_k():
    index = ExactIndex(1)
    index.upsert(["a", "b", "c", "d"], vectors([4], [3], [2], [1]))
    # The three best are excluded; the answer is the fourth, not an empty list.
    assert ids_of(index.search(vectors([1])[0], k=1, exclude={"a", "b", "c"})) == ["d"]
    assert ids_of(index.search(vectors([1])[0], k=9, exclude=["b", "unknown"])) == ["a", "c", "d"]


def test_ties_break_by_insertion_order():
    index = ExactIndex(1)
    index.upsert([f"i{j}" for j in range(50)], np.ones((50, 1), dtype=np.float32))
    assert ids_of(index.search(vectors([1])[0], k=3)) == ["i0", "i1", "i2"]
    assert ids_of(index.search(vectors([1])[0], k=3, exclude={"i1"})) == ["i0", "i2", "i3"]


def test_rejects_a_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        ExactIndex(3).upsert(["a", "b"], np.ones((2, 4), dtype=np.float32))


# Properties. Few distinct ids so upserts repeat ids; small integers so ties are common
# and the float32 inner products are exact, which makes the reference comparable.
item_ids = st.sampled_from([f"i{j}" for j in range(12)])
small = st.integers(-3, 3).map(float)


@st.composite
def index_and_query(draw):
    dim = draw(st.integers(1, 4))
    batches = draw(
        st.lists(
            st.lists(st.tuples(item_ids, st.lists(small, min_size=dim, max_size=dim))), max_size=5
        )
    )
    query = draw(hnp.arrays(np.float32, dim, elements=small))
    exclude = draw(st.sets(item_ids, max_size=6))
    k = draw(st.integers(0, 15))
    return dim, batches, query, exclude, k


@settings(max_examples=200, deadline=None)
@given(index_and_query())
def test_search_matches_brute_force(case):
    dim, batches, query, exclude, k = case
    index = ExactIndex(dim, capacity=1)
    reference: dict[str, np.ndarray] = {}  # insertion-ordered, last write wins
    for batch in batches:
        ids = [item_id for item_id, _ in batch]
        index.upsert(ids, np.array([v for _, v in batch], dtype=np.float32).reshape(-1, dim))
        for item_id, vector in batch:
            reference[item_id] = np.array(vector, dtype=np.float32)
        # Upserting the same ids twice keeps the size.
        assert len(index) == len(reference)

    results = index.search(query, k, exclude)
    allowed = [(i, float(v @ query)) for i, v in reference.items() if i not in exclude]
    # Best first; ties keep first-insertion order (sorted() is stable).
    expected = sorted(allowed, key=lambda pair: -pair[1])[: max(k, 0)]
    assert [(s.item_id, s.score) for s in results] == expected
    assert len(results) == min(max(k, 0), len(allowed))
    assert not {s.item_id for s in results} & exclude
    scores = [s.score for s in results]
    assert scores == sorted(scores, reverse=True)


@settings(max_examples=50, deadline=None)
@given(st.lists(item_ids, min_size=1, max_size=30))
def test_upserting_again_is_idempotent(ids):
    index = ExactIndex(2)
    rng = np.random.default_rng(len(ids))
    batch = rng.standard_normal((len(ids), 2)).astype(np.float32)
    index.upsert(ids, batch)
    first = index.search(np.ones(2, dtype=np.float32), k=20)
    index.upsert(ids, batch)
    assert len(index) == len(set(ids))
    assert index.search(np.ones(2, dtype=np.float32), k=20) == first


def test_search_many_returns_what_search_returns():
    rng = np.random.default_rng(5)
    index = ExactIndex(8)
    ids = [f"i{j}" for j in range(300)]
    # Rounded vectors make exact ties, whose order must match too.
    index.upsert(ids, np.round(rng.standard_normal((300, 8)), 1).astype(np.float32))
    queries = np.round(rng.standard_normal((20, 8)), 1).astype(np.float32)
    excludes = [set(rng.choice(ids, size=q % 4, replace=False)) for q in range(20)]
    got = index.search_many(queries, 10, excludes)
    assert got == [index.search(q, 10, ex) for q, ex in zip(queries, excludes, strict=True)]
    assert index.search_many(queries[:0], 10, []) == []
    with pytest.raises(ValueError, match="exclude sets"):
        index.search_many(queries, 10, excludes[:3])
