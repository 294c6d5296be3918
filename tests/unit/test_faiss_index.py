"""FaissIndex beyond the shared contract: the switch to approximate search, freshness of
the delta, background rebuilds under concurrent queries, `close`, `search_many`.

The contract itself (best-first, exclusions, min(k, available)) runs in
test_index_contract.py against FaissIndex in both modes.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.base import Scored
from serving.ann import HnswParams, lower_thread_priority
from serving.faiss_index import FaissIndex


def ids_of(results: list[Scored]) -> list[str]:
    return [s.item_id for s in results]


def exact_top(ids: list[str], vectors: np.ndarray, query: np.ndarray, k: int) -> list[str]:
    scores = vectors.astype(np.float64) @ query.astype(np.float64)
    return [ids[row] for row in sorted(range(len(ids)), key=lambda row: (-scores[row], row))[:k]]


def catalogue(n: int, dim: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"item-{i}" for i in range(n)], rng.standard_normal((n, dim)).astype(np.float32)


def test_exact_below_the_threshold_approximate_from_it() -> None:
    ids, vectors = catalogue(300, 8)
    index = FaissIndex(8, exact_below=200, background=False)
    index.upsert(ids[:199], vectors[:199])
    assert not index.approximate and index.builds == 0
    index.upsert(ids[199:], vectors[199:])  # crosses 200: builds inline
    assert index.approximate and index.builds == 1 and index.delta_size == 0


def test_a_changed_vector_ranks_by_its_new_value_before_any_rebuild() -> None:
    ids, vectors = catalogue(2000, 16)
    index = FaissIndex(16, exact_below=1, background=False)
    index.upsert(ids, vectors)
    query = np.random.default_rng(1).standard_normal(16).astype(np.float32)
    top = index.search(query, 5)
    best, worst = top[0].item_id, exact_top(ids, vectors, query, 2000)[-1]
    builds = index.builds
    # The former best now points away from the query; the former worst along it, far
    # beyond every other item (the best score was ~top[0].score).
    index.upsert([best, worst], np.stack([-query, 10 * query]))
    assert index.builds == builds and index.delta_size == 2  # no rebuild happened
    fresh = index.search(query, 5)
    assert fresh[0] == Scored(worst, pytest.approx(10 * float(query @ query), rel=1e-5))
    assert best not in ids_of(fresh)
    assert ids_of(fresh)[1:] == ids_of(top)[1:5]
    # A new id is searchable at once too.
    index.upsert(["new"], (20 * query)[None])
    assert index.search(query, 1)[0].item_id == "new"


def test_a_full_delta_moves_its_least_recently_changed_rows_into_the_graph() -> None:
    ids, vectors = catalogue(1000, 8)
    index = FaissIndex(8, exact_below=1, delta_rows=50, background=False)
    index.upsert(ids, vectors)
    assert index.builds == 1
    query = np.ones(8, dtype=np.float32)
    vectors[:80] *= -1.0
    index.upsert(ids[:40], vectors[:40])
    index.upsert(ids[:1], vectors[:1])  # changed again: now the most recent
    index.upsert(ids[40:80], vectors[40:80])
    # 80 changed rows, 50 kept: the 30 changed least recently went into the graph,
    # each retiring its old node, and row 0 (changed last among the first 40) stayed.
    assert index.delta_size == 50 and index.retired_nodes == 30 and index.builds == 1
    assert 0 in index._delta and 1 not in index._delta
    assert ids_of(index.search(query, 20)) == exact_top(ids, vectors, query, 20)
    top = index.search(query, 1000)
    assert sorted(ids_of(top)) == sorted(ids)  # every row once: no retired node answers
    by_id = {s.item_id: s.score for s in top}
    assert by_id[ids[1]] == pytest.approx(float(vectors[1] @ query), rel=1e-5)


def test_retired_nodes_reaching_the_fraction_trigger_a_rebuild() -> None:
    ids, vectors = catalogue(1000, 8)
    index = FaissIndex(8, exact_below=1, delta_rows=10, rebuild_fraction=0.1, background=False)
    index.upsert(ids, vectors)
    index.upsert(ids[:109], vectors[:109] * 2)
    assert index.builds == 1 and index.retired_nodes == 99 and index.delta_size == 10
    index.upsert(ids[109:110], vectors[109:110] * 2)  # 100 retired = 10% of 1000
    assert index.builds == 2 and index.retired_nodes == 0 and index.delta_size == 0


def test_background_rebuild_then_wait() -> None:
    ids, vectors = catalogue(3000, 8)
    with FaissIndex(8, exact_below=1000) as index:
        index.upsert(ids, vectors)  # starts a build in the background
        index.rebuild(wait=True)
        assert index.approximate and index.delta_size == 0
        query = np.ones(8, dtype=np.float32)
        assert len(index.search(query, 10)) == 10


def test_many_stale_top_hits_still_fill_k() -> None:
    # Rewrite the 200 best items for a query (all now in the delta, stale in the
    # graph) to score lowest: the graph's first answers are all dropped.
    ids, vectors = catalogue(2000, 8)
    index = FaissIndex(8, exact_below=1, background=False, rebuild_fraction=0.5)
    index.upsert(ids, vectors)
    query = np.ones(8, dtype=np.float32)
    best = exact_top(ids, vectors, query, 200)
    rows = [ids.index(item) for item in best]
    vectors[rows] = -np.abs(vectors[rows]) - 5
    index.upsert(best, vectors[rows])
    assert index.delta_size == 200
    results = index.search(query, 10)
    assert len(results) == 10 and not set(ids_of(results)) & set(best)
    expected = exact_top(ids, vectors, query, 10)
    assert len(set(ids_of(results)) & set(expected)) >= 9


def test_search_many_equals_search() -> None:
    ids, vectors = catalogue(1500, 8)
    index = FaissIndex(8, exact_below=1, background=False, rebuild_fraction=0.5)
    index.upsert(ids, vectors)
    index.upsert(ids[:50], vectors[:50] * -1.5)  # some rows in the delta
    rng = np.random.default_rng(2)
    queries = rng.standard_normal((20, 8)).astype(np.float32)
    excludes = [set(rng.choice(ids, size=int(rng.integers(0, 30))).tolist()) for _ in range(20)]
    many = index.search_many(queries, 10, excludes)
    assert many == [index.search(q, 10, ex) for q, ex in zip(queries, excludes, strict=True)]
    assert index.search_many(queries, 10) == [index.search(q, 10) for q in queries]
    with pytest.raises(ValueError):
        index.search_many(queries, 10, excludes[:3])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(30, 400),
    changed=st.integers(0, 120),
    delta_rows=st.integers(1, 64),
    k=st.integers(1, 40),
    ties=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_batch_merge_is_the_single_merge_row_by_row(
    n: int, changed: int, delta_rows: int, k: int, ties: bool, seed: int
) -> None:
    """`search_many` merges every query's graph and delta hits at once; each row of
    that merge is exactly the single-query `_merge` of the same hits, ties in the same
    order: with stale graph hits, retired nodes, exclusions reaching into both, and
    too few survivors (None). (Compared on the same hits: `search` and `search_many`
    ask the graph for different numbers, so HNSW may break ties differently.)"""
    rng = np.random.default_rng(seed)
    ids, vectors = catalogue(n, 4, seed)
    if ties:  # equal vectors under different ids: equal scores
        vectors[1::2] = vectors[::2][: len(vectors[1::2])]
    index = FaissIndex(4, exact_below=1, background=False, delta_rows=delta_rows)
    index.upsert(ids, vectors)
    moved = rng.choice(n, size=min(changed, n), replace=False)
    index.upsert([ids[r] for r in moved], vectors[moved] * -1.0)
    queries = rng.standard_normal((12, 4)).astype(np.float32)
    banned = [
        {int(r) for r in rng.choice(n, size=int(rng.integers(0, n // 2 + 1)))} for _ in range(12)
    ]
    targets = [min(k, n - len(ban)) for ban in banned]
    want = k + max(map(len, banned)) + min(len(index._delta), k)
    graph = index._graph
    assert graph is not None
    a_scores, a_rows = graph.search(queries, want)
    d_scores, d_rows = index._delta.search(queries, k + max(map(len, banned)))
    complete = want >= graph.nodes
    merged = index._merge_many(a_scores, a_rows, d_scores, d_rows, banned, targets, complete)
    for i in range(len(queries)):
        rows = slice(i, i + 1)
        delta = (d_scores[rows], d_rows[rows]) if d_rows.size else (d_scores, d_rows)
        single = index._merge(a_scores[rows], a_rows[rows], *delta, banned[i], targets[i], complete)
        found = merged[i]
        assert (None if found is None else ids_at(index, *found)) == single


def ids_at(index: FaissIndex, scores: list[float], rows: list[int]) -> list[Scored]:
    ids = index.ids()
    return [Scored(ids[row], score) for score, row in zip(scores, rows, strict=True)]


@pytest.mark.parametrize("exact_below", [1, 10_000])
def test_search_ids_many_is_the_ids_of_search_many(exact_below: int) -> None:
    ids, vectors = catalogue(1500, 8)
    index = FaissIndex(8, exact_below=exact_below, background=False, delta_rows=64)
    index.upsert(ids, vectors)
    index.upsert(ids[:300], vectors[:300] * -1.5)  # a delta, stale graph hits
    queries = np.random.default_rng(3).standard_normal((20, 8)).astype(np.float32)
    for k in (1, 10, 200, 2000):
        expected = [ids_of(found) for found in index.search_many(queries, k)]
        assert index.search_ids_many(queries, k) == expected
    assert index.search_ids_many(queries[:0], 10) == []


def test_close_stops_an_inflight_build_and_the_index_keeps_serving() -> None:
    # 80k rows is five build chunks: close() ends the build at the next chunk.
    ids, vectors = catalogue(80_000, 32)
    index = FaissIndex(32, exact_below=1)
    index.upsert(ids, vectors)
    index.close()
    assert index._builder is not None and not index._builder.is_alive()
    assert not index.approximate  # the interrupted build was never installed
    index.upsert(["x"], np.ones((1, 32), dtype=np.float32))  # no new build after close
    assert index._builder is not None and not index._builder.is_alive()
    assert len(index.search(np.ones(32, dtype=np.float32), 10)) == 10


def test_queries_during_upserts_and_background_rebuilds() -> None:
    """One thread upserts (changed and new vectors, triggering rebuilds), another
    queries without pause: no exception, always k results, and after a final rebuild
    the answers equal exact search."""
    dim, k = 8, 10
    ids, vectors = catalogue(400, dim, seed=3)
    index = FaissIndex(
        dim, exact_below=100, delta_rows=20, rebuild_fraction=0.2, hnsw=HnswParams(ef_search=128)
    )
    index.upsert(ids[:150], vectors[:150])
    errors: list[BaseException] = []
    queries_run = 0
    done = threading.Event()

    def query_loop() -> None:
        nonlocal queries_run
        rng = np.random.default_rng(4)
        try:
            while not done.is_set():
                query = rng.standard_normal(dim).astype(np.float32)
                exclude = {ids[int(i)] for i in rng.integers(0, 150, size=5)}
                results = index.search(query, k, exclude)
                assert len(results) == k, results
                assert not set(ids_of(results)) & exclude
                queries_run += 1
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    reader = threading.Thread(target=query_loop)
    reader.start()
    rng = np.random.default_rng(5)
    try:
        for step in range(150, 400, 5):
            index.upsert(ids[step : step + 5], vectors[step : step + 5])
            changed = rng.integers(0, step, size=10)
            vectors[changed] = rng.standard_normal((10, dim)).astype(np.float32)
            index.upsert([ids[i] for i in changed], vectors[changed])
            if step % 50 == 0:
                index.rebuild(wait=False)
            time.sleep(0.001)
    finally:
        done.set()
        reader.join()
    assert not errors, errors[0]
    assert queries_run > 0 and index.builds >= 2
    index.rebuild(wait=True)
    index.close()
    assert len(index) == 400 and index.delta_size == 0
    for query in np.random.default_rng(6).standard_normal((20, dim)).astype(np.float32):
        assert ids_of(index.search(query, k)) == exact_top(ids, vectors, query, k)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 40), st.integers(-3, 3)), min_size=1, max_size=25),
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 15),
    st.sets(st.integers(0, 45), max_size=10),
)
def test_interleaved_upserts_keep_the_contract(
    batches: list[list[tuple[int, int]]], k: int, excluded: set[int]
) -> None:
    """Batches of upserts over few ids (so ids repeat, some rows land in the delta and
    some go on into the graph, some batches trigger rebuilds): size, exclusions,
    ordering and freshness hold."""
    dim = 4
    index = FaissIndex(dim, exact_below=10, delta_rows=4, background=False, rebuild_fraction=0.3)
    current: dict[str, np.ndarray] = {}
    for batch in batches:
        ids = [f"i{item}" for item, _ in batch]
        vectors = np.array([[shift, 1, -shift, item % 3] for item, shift in batch], np.float32)
        index.upsert(ids, vectors)
        current.update(zip(ids, vectors, strict=True))
        assert len(index) == len(current)
    query = np.array([1, 0.5, -0.25, 0.1], dtype=np.float32)
    exclude = {f"i{item}" for item in excluded}
    results = index.search(query, k, exclude)
    available = [item for item in current if item not in exclude]
    assert len(results) == min(k, len(available))
    assert not set(ids_of(results)) & exclude
    scores = [s.score for s in results]
    assert scores == sorted(scores, reverse=True)
    for s in results:  # every score is the newest vector's
        assert s.score == pytest.approx(float(current[s.item_id] @ query), abs=1e-5)


def test_set_ef_search_applies_now_and_to_later_builds() -> None:
    ids, vectors = catalogue(500, 8)
    index = FaissIndex(8, exact_below=1, background=False)
    index.upsert(ids, vectors)
    index.set_ef_search(200)
    assert index._graph is not None and index._graph.index.hnsw.efSearch == 200
    index.rebuild(wait=True)  # nothing changed: the snapshot is current, no new build
    assert index.builds == 1
    index.upsert(ids[:1], vectors[:1] * 2)
    index.rebuild(wait=True)
    assert index.builds == 2 and index._graph.index.hnsw.efSearch == 200
    query = np.ones(8, dtype=np.float32)
    assert len(index.search(query, 10)) == 10


def thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_background_builds_run_at_build_nice_and_only_that_thread() -> None:
    """The build thread lowers its own priority; the caller's stays as it was, and a
    build that `rebuild(wait=True)` waits for keeps the caller's priority."""
    before = thread_nice()
    if before >= 19:
        pytest.skip("the process already runs at the lowest priority")
    target = before + 1
    seen: list[int] = []
    ids, vectors = catalogue(300, 4)
    index = FaissIndex(
        4,
        exact_below=10**6,
        build_nice=target,
        progress=lambda done, total: seen.append(thread_nice()),
    )
    index.upsert(ids, vectors)
    index.rebuild(wait=True)  # waited for: the caller's priority
    assert seen and set(seen) == {before}
    seen.clear()
    index.upsert(ids[:5], vectors[:5] * 2)
    index.rebuild(wait=False)  # in the background: build_nice
    index.rebuild(wait=True)  # joins that build; the delta it leaves is empty
    index.close()
    assert seen and set(seen) == {target}
    assert thread_nice() == before


def test_lower_thread_priority_refuses_non_positive_levels() -> None:
    before = thread_nice()
    assert lower_thread_priority(0) is False
    assert thread_nice() == before
