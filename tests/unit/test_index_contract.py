"""The `ItemIndex` contract, run against every implementation of the port.

`serving.faiss_index.FaissIndex` (what the worker serves from) and
`model.index.ExactIndex` (what evaluation uses) must agree with each other and with a
brute-force NumPy reference: best-first, never an excluded id, min(k, available) results.
`search_many` (the batch form) is held to the same contract row by row.

`FaissIndex` also runs forced into its approximate mode (an HNSW snapshot from the first
upsert, plus the exact delta of rows written since): there exactness is replaced by
recall, and everything else in the contract still holds.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from model.base import ItemIndex, Scored
from model.index import ExactIndex
from serving.ann import HnswParams
from serving.faiss_index import FaissIndex

Factory = Callable[[int], ItemIndex]


def approximate_faiss(dim: int) -> FaissIndex:
    """Approximate from the first upsert; snapshots build inline (deterministic), and a
    later upsert touching under half the rows stays in the delta. A wider beam than the
    default: hypothesis finds 1-dimensional sets where HNSW over inner product misses
    more than a tenth at ef 32, and HNSW's recall is bench/ann.py's business, not this
    contract's."""
    return FaissIndex(
        dim,
        exact_below=1,
        background=False,
        rebuild_fraction=0.5,
        hnsw=HnswParams(ef_search=64),
    )


def spilling_faiss(dim: int) -> FaissIndex:
    """`approximate_faiss` with a delta of two rows: changed rows go on into the graph
    (retiring their old nodes) and retired nodes trigger rebuilds."""
    return FaissIndex(
        dim,
        exact_below=1,
        background=False,
        delta_rows=2,
        rebuild_fraction=0.5,
        hnsw=HnswParams(ef_search=64),
    )


# The approximate mode is held to recall, not exactness; on these small, low-dimensional
# sets HNSW finds nearly everything, so a low bar still catches a broken merge. Not in
# one dimension: there the graph's neighbour heuristic over inner products can leave the
# best item unreachable (46 items, dim 1, seed 205524 after a re-upsert: item-10 is
# never returned, even at k=5; 1 case in 800 random ones at dim 1, none of 800 each at
# dims 2-4). Our vectors have dozens of dimensions. From two dimensions on, one miss per
# query is still allowed whatever k: the same heuristic can leave one node unreachable
# (46 integer vectors in dim 2, seed 65536, re-upserted with seed2 1240927: item-40, an
# exact duplicate of item-31, is never returned at k=4), about 1 case in 1,500 random
# ones at dims 2-6. The delta merge this would hide is tested exactly in test_faiss_index.
MIN_RECALL = 0.9
MIN_RECALL_DIM = 2


def allowed_misses(k: int) -> int:
    return max(1, int((1 - MIN_RECALL) * k))


def is_exact(make_index: Factory) -> bool:
    return make_index not in (approximate_faiss, spilling_faiss)


@pytest.fixture(
    scope="module",
    params=[FaissIndex, ExactIndex, approximate_faiss, spilling_faiss],
    ids=["FaissIndex", "ExactIndex", "FaissIndex-approximate", "FaissIndex-spilling"],
)
def make_index(request: pytest.FixtureRequest) -> Factory:
    # Module scope: the factory holds no state, and hypothesis forbids function-scoped
    # fixtures under @given.
    return request.param  # type: ignore[no-any-return]


def ids_of(results: Sequence[Scored]) -> list[str]:
    return [s.item_id for s in results]


def random_index(
    make_index: Factory, n: int, dim: int, seed: int
) -> tuple[ItemIndex, list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = [f"item-{i}" for i in range(n)]
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    index = make_index(dim)
    if n:
        index.upsert(ids, vectors)
    return index, ids, vectors


def reference(
    ids: list[str], vectors: np.ndarray, query: np.ndarray, k: int, exclude: Collection[str]
) -> list[tuple[str, float]]:
    """Brute force in float64: score descending, then insertion order."""
    scores = vectors.astype(np.float64) @ query.astype(np.float64)
    order = sorted(range(len(ids)), key=lambda row: (-scores[row], row))
    kept = [(ids[row], float(scores[row])) for row in order if ids[row] not in exclude]
    return kept[: max(k, 0)]


def check_search(
    index: ItemIndex,
    ids: list[str],
    vectors: np.ndarray,
    query: np.ndarray,
    k: int,
    exclude: Collection[str],
    exact: bool = True,
) -> None:
    """The whole search contract, tolerant only of the order within (near-)ties; with
    `exact=False`, the results may miss `allowed_misses` of the true top k."""
    check_results(index.search(query, k, exclude=exclude), ids, vectors, query, k, exclude, exact)


def check_results(
    results: Sequence[Scored],
    ids: list[str],
    vectors: np.ndarray,
    query: np.ndarray,
    k: int,
    exclude: Collection[str],
    exact: bool = True,
) -> None:
    """`check_search` on results already fetched (by `search` or one row of `search_many`)."""
    expected = reference(ids, vectors, query, k, exclude)
    assert all(isinstance(s, Scored) for s in results)
    assert len(results) == len(expected)
    assert not set(ids_of(results)) & set(exclude)
    assert len(set(ids_of(results))) == len(results), "an id was returned twice"
    scores = [s.score for s in results]
    assert scores == sorted(scores, reverse=True), "not best-first"
    true_scores = dict(
        zip(ids, (vectors.astype(np.float64) @ query.astype(np.float64)).tolist(), strict=True)
    )
    for s in results:
        assert s.score == pytest.approx(true_scores[s.item_id], rel=1e-4, abs=1e-4)
    if not exact:
        if len(query) >= MIN_RECALL_DIM:
            assert misses(results, expected) <= allowed_misses(len(expected))
        return
    # The returned scores are the top scores of the reference (ties may swap ids).
    np.testing.assert_allclose(scores, [score for _, score in expected], rtol=1e-4, atol=1e-4)


def misses(results: Sequence[Scored], expected: list[tuple[str, float]]) -> int:
    """How many of the true top k were not found, counting a tie with the k-th best as
    found."""
    if not expected:
        return 0
    kth = expected[-1][1]
    return len(expected) - sum(s.score >= kth - 1e-4 for s in results)


# --- upsert -----------------------------------------------------------------------------


def test_satisfies_the_protocol(make_index: Factory) -> None:
    assert isinstance(make_index(4), ItemIndex)


def test_upsert_twice_keeps_size_and_replaces_the_vector(make_index: Factory) -> None:
    index = make_index(3)
    index.upsert(["a", "b"], np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32))
    index.upsert(["a", "b"], np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32))
    assert len(index) == 2
    index.upsert(["a"], np.array([[0, 0, 5]], dtype=np.float32))
    assert len(index) == 2
    np.testing.assert_array_equal(index.vector("a"), [0, 0, 5])  # type: ignore[attr-defined]
    np.testing.assert_array_equal(index.vector("b"), [0, 1, 0])  # type: ignore[attr-defined]
    # The search sees the new vector, not the old one.
    top = index.search(np.array([0, 0, 1], dtype=np.float32), 1)
    assert top == [Scored("a", 5.0)]
    assert index.search(np.array([1, 0, 0], dtype=np.float32), 1)[0].score == 0.0


def test_upsert_new_and_known_ids_together(make_index: Factory) -> None:
    index = make_index(2)
    index.upsert(["a"], np.array([[1, 0]], dtype=np.float32))
    index.upsert(["a", "b"], np.array([[2, 0], [0, 3]], dtype=np.float32))
    assert len(index) == 2
    assert "a" in index and "b" in index and "c" not in index  # type: ignore[operator]
    assert ids_of(index.search(np.array([1, 1], dtype=np.float32), 5)) == ["b", "a"]


def test_repeated_id_within_one_upsert_keeps_the_last_vector(make_index: Factory) -> None:
    index = make_index(2)
    index.upsert(["a", "a"], np.array([[1, 0], [0, 1]], dtype=np.float32))
    assert len(index) == 1
    np.testing.assert_array_equal(index.vector("a"), [0, 1])  # type: ignore[attr-defined]


def test_vector_of_unknown_id_is_key_error(make_index: Factory) -> None:
    with pytest.raises(KeyError):
        make_index(2).vector("nope")  # type: ignore[attr-defined]


def test_grows_past_its_initial_capacity(make_index: Factory) -> None:
    # Both start with 1024 rows; 2500 forces two doublings.
    index, ids, vectors = random_index(make_index, 2500, 4, seed=1)
    assert len(index) == 2500
    np.testing.assert_array_equal(index.vector(ids[0]), vectors[0])  # type: ignore[attr-defined]
    np.testing.assert_array_equal(index.vector(ids[-1]), vectors[-1])  # type: ignore[attr-defined]
    query = np.ones(4, dtype=np.float32)
    check_search(index, ids, vectors, query, 10, (), exact=is_exact(make_index))


def test_upsert_with_the_wrong_dimension_is_rejected(make_index: Factory) -> None:
    index = make_index(3)
    with pytest.raises(ValueError):
        index.upsert(["a", "b"], np.ones((2, 4), dtype=np.float32))


# --- search -----------------------------------------------------------------------------


def test_empty_index_returns_nothing(make_index: Factory) -> None:
    index = make_index(4)
    assert index.search(np.ones(4, dtype=np.float32), 10) == []
    assert index.search(np.ones(4, dtype=np.float32), 10, exclude={"a"}) == []


@pytest.mark.parametrize("k", [0, -1])
def test_non_positive_k_returns_nothing(make_index: Factory, k: int) -> None:
    index, _, _ = random_index(make_index, 10, 4, seed=0)
    assert index.search(np.ones(4, dtype=np.float32), k) == []


def test_known_answer(make_index: Factory) -> None:
    index = make_index(2)
    index.upsert(["a", "b", "c", "d"], np.array([[1, 0], [0, 1], [2, 0], [-1, 0]], np.float32))
    query = np.array([1, 0], dtype=np.float32)
    assert index.search(query, 2) == [Scored("c", 2.0), Scored("a", 1.0)]
    assert ids_of(index.search(query, 10, exclude={"c"})) == ["a", "b", "d"]
    assert ids_of(index.search(query, 2, exclude=["c", "a", "missing"])) == ["b", "d"]


def test_results_are_sorted_best_first(make_index: Factory) -> None:
    index, ids, vectors = random_index(make_index, 300, 8, seed=2)
    query = np.random.default_rng(3).standard_normal(8).astype(np.float32)
    results = index.search(query, 50)
    scores = [s.score for s in results]
    assert len(results) == 50
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > scores[-1]


@pytest.mark.parametrize("k", [1, 10, 299, 300, 301, 1000])
def test_returns_min_of_k_and_available(make_index: Factory, k: int) -> None:
    index, ids, vectors = random_index(make_index, 300, 8, seed=4)
    query = np.random.default_rng(5).standard_normal(8).astype(np.float32)
    assert len(index.search(query, k)) == min(k, 300)
    exclude = set(ids[::3])  # 100 excluded
    results = index.search(query, k, exclude=exclude)
    assert len(results) == min(k, 200)
    assert not set(ids_of(results)) & exclude


def test_many_excluded_top_items_still_fill_k(make_index: Factory) -> None:
    index, ids, vectors = random_index(make_index, 3000, 8, seed=6)
    query = np.random.default_rng(7).standard_normal(8).astype(np.float32)
    best = [item for item, _ in reference(ids, vectors, query, 3000, ())]
    exclude = set(best[:2500])  # the 2,500 best items, so only 500 remain
    results = index.search(query, 10, exclude=exclude)
    if is_exact(make_index):
        assert ids_of(results) == best[2500:2510]
    check_search(index, ids, vectors, query, 10, exclude, exact=is_exact(make_index))
    assert len(index.search(query, 600, exclude=exclude)) == 500
    assert index.search(query, 5, exclude=set(ids)) == []


def test_exclude_accepts_any_collection(make_index: Factory) -> None:
    index, ids, vectors = random_index(make_index, 50, 4, seed=8)
    query = np.ones(4, dtype=np.float32)
    top3 = ids_of(index.search(query, 3))
    for exclude in (
        set(top3[:2]),
        frozenset(top3[:2]),
        list(top3[:2]),
        tuple(top3[:2]),
        {item: 1 for item in top3[:2]}.keys(),
    ):
        assert ids_of(index.search(query, 1, exclude=exclude)) == [top3[2]]


@pytest.mark.parametrize("seed", range(5))
def test_same_ids_as_brute_force_on_random_data(make_index: Factory, seed: int) -> None:
    index, ids, vectors = random_index(make_index, 500, 16, seed=seed)
    rng = np.random.default_rng(seed + 100)
    query = rng.standard_normal(16).astype(np.float32)
    exclude = {ids[i] for i in rng.choice(500, size=40, replace=False)}
    # Random Gaussian data has no ties at float32 precision, so the ids match exactly.
    expected = reference(ids, vectors, query, 25, exclude)
    if is_exact(make_index):
        assert ids_of(index.search(query, 25, exclude=exclude)) == [item for item, _ in expected]
    check_search(index, ids, vectors, query, 25, exclude, exact=is_exact(make_index))


def test_both_implementations_agree() -> None:
    rng = np.random.default_rng(42)
    ids = [f"i{j}" for j in range(400)]
    vectors = rng.standard_normal((400, 12)).astype(np.float32)
    faiss_index, exact_index = FaissIndex(12), ExactIndex(12)
    for index in (faiss_index, exact_index):
        index.upsert(ids, vectors)
    for _ in range(10):
        query = rng.standard_normal(12).astype(np.float32)
        exclude = set(rng.choice(ids, size=30, replace=False).tolist())
        assert ids_of(faiss_index.search(query, 20, exclude)) == ids_of(
            exact_index.search(query, 20, exclude)
        )


# --- properties -------------------------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, int, int, bool, int, list[int]]:
    n = draw(st.integers(0, 60))
    dim = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    # Small-integer vectors make many exact ties; Gaussian ones make none.
    integer = draw(st.booleans())
    k = draw(st.integers(-1, 70))
    excluded = draw(st.lists(st.integers(0, max(n + 5, 1)), max_size=n + 5))
    return n, dim, seed, integer, k, excluded


def build(
    make_index: Factory, n: int, dim: int, seed: int, integer: bool
) -> tuple[ItemIndex, list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = [f"item-{i}" for i in range(n)]
    if integer:
        vectors = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
        query = rng.integers(-2, 3, size=dim).astype(np.float32)
    else:
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        query = rng.standard_normal(dim).astype(np.float32)
    index = make_index(dim)
    if n:
        index.upsert(ids, vectors)
    return index, ids, vectors, query


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_search_contract_property(
    make_index: Factory, scenario: tuple[int, int, int, bool, int, list[int]]
) -> None:
    n, dim, seed, integer, k, excluded = scenario
    index, ids, vectors, query = build(make_index, n, dim, seed, integer)
    # Excluded ids include some that are not in the index (numbers >= n).
    exclude = {f"item-{i}" for i in excluded}
    check_search(index, ids, vectors, query, k, exclude, exact=is_exact(make_index))
    available = len(set(ids) - exclude)
    assert len(index.search(query, k, exclude=exclude)) == min(max(k, 0), available)


@settings(max_examples=40, deadline=None)
@given(scenarios(), st.integers(0, 2**32 - 1))
@example((46, 1, 205524, False, 1, []), 0)  # the one-dimensional miss MIN_RECALL_DIM names
@example((46, 2, 65536, True, 4, []), 1240927)  # the duplicate allowed_misses names
def test_upsert_twice_property(
    make_index: Factory, scenario: tuple[int, int, int, bool, int, list[int]], seed2: int
) -> None:
    n, dim, seed, integer, k, _ = scenario
    index, ids, vectors, query = build(make_index, n, dim, seed, integer)
    before = index.search(query, k)
    if n:
        index.upsert(ids, vectors)  # the same vectors again: nothing changes
    assert len(index) == n
    if is_exact(make_index):
        assert index.search(query, k) == before
    else:  # the same rows now come from the delta, not the snapshot: same scores
        assert [s.score for s in index.search(query, k)] == [s.score for s in before]
    # New vectors for a subset of the ids: the size stays, the vectors are replaced.
    rng = np.random.default_rng(seed2)
    changed = [item for item in ids if rng.random() < 0.5]
    if changed:
        fresh = rng.standard_normal((len(changed), dim)).astype(np.float32)
        index.upsert(changed, fresh)
        for item, vector in zip(changed, fresh, strict=True):
            vectors[ids.index(item)] = vector
            np.testing.assert_array_equal(index.vector(item), vector)  # type: ignore[attr-defined]
    assert len(index) == n
    check_search(index, ids, vectors, query, k, (), exact=is_exact(make_index))


# --- search_many ------------------------------------------------------------------------


def batch_search(index: ItemIndex) -> Callable[..., list[list[Scored]]]:
    """The implementation's `search_many`; skips an implementation that has none yet."""
    search_many = getattr(index, "search_many", None)
    if search_many is None:
        pytest.skip(f"{type(index).__name__} has no search_many")
    return search_many  # type: ignore[no-any-return]


def test_search_many_of_no_queries_is_empty(make_index: Factory) -> None:
    index, _, _ = random_index(make_index, 20, 4, seed=0)
    assert batch_search(index)(np.zeros((0, 4), dtype=np.float32), 5, []) == []


@pytest.mark.parametrize("k", [0, -1])
def test_search_many_with_non_positive_k_returns_empty_rows(make_index: Factory, k: int) -> None:
    index, _, _ = random_index(make_index, 20, 4, seed=0)
    assert batch_search(index)(np.ones((3, 4), dtype=np.float32), k, [(), (), ()]) == [[], [], []]


def test_search_many_applies_each_rows_own_excludes(make_index: Factory) -> None:
    index = make_index(2)
    index.upsert(["a", "b", "c", "d"], np.array([[1, 0], [0, 1], [2, 0], [-1, 0]], np.float32))
    queries = np.array([[1, 0], [1, 0], [-1, 0.5]], dtype=np.float32)
    results = batch_search(index)(queries, 2, [{"c"}, (), ["b", "missing"]])
    assert [ids_of(row) for row in results] == [["a", "b"], ["c", "a"], ["d", "a"]]


@settings(max_examples=60, deadline=None)
@given(scenarios(), st.integers(0, 6), st.integers(0, 2**32 - 1))
def test_search_many_contract_property(
    make_index: Factory,
    scenario: tuple[int, int, int, bool, int, list[int]],
    nq: int,
    seed2: int,
) -> None:
    n, dim, seed, integer, k, _ = scenario
    index, ids, vectors, _ = build(make_index, n, dim, seed, integer)
    search_many = batch_search(index)
    rng = np.random.default_rng(seed2)
    if integer:
        queries = rng.integers(-2, 3, size=(nq, dim)).astype(np.float32)
    else:
        queries = rng.standard_normal((nq, dim)).astype(np.float32)
    # Each row its own exclusions, some of ids the index does not hold.
    excludes = [
        {f"item-{i}" for i in rng.integers(0, n + 5, size=int(rng.integers(0, n + 3)))}
        for _ in range(nq)
    ]
    results = search_many(queries, k, excludes)
    assert len(results) == nq
    for row, query, exclude in zip(results, queries, excludes, strict=True):
        check_results(row, ids, vectors, query, k, exclude, exact=is_exact(make_index))
        assert len(row) == min(max(k, 0), len(set(ids) - exclude))
