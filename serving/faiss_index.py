"""FAISS inner-product index over item vectors that takes upserts while serving.

Source of truth: one growable float32 matrix with an id -> row map, so an upsert is a
row write (O(dim)), never the O(N) `IndexIDMap2.remove_ids` + `add` of a FAISS id map.

Search is exact (FAISS brute force over the filled rows) while the catalogue is smaller
than `exact_below`. Past it, search is approximate: an HNSW graph of the matrix
(`serving.ann.Graph`) plus an exact search over the *delta*, the `delta_rows` rows that
changed most recently. Graph hits on delta rows are stale and dropped, so a query always
ranks by the newest vectors. A row that changes joins the delta; when the delta is full,
the rows that changed least recently leave it for the graph, each as a new node that
retires the row's old one (a few HNSW insertions per upsert, on the caller's thread). A
hot item, changed by every click on it, stays in the delta and costs no graph node per
change. When retired nodes reach `rebuild_fraction` of the graph's rows, a background
thread builds a fresh graph from a copy of the matrix and installs it together with a
new delta (the rows written since its copy began) under the lock, as one state change:
a query sees either the old pair or the new one, never a mix. With `build_nice` > 0 that
thread runs at that niceness (Linux, per thread: `serving.ann.lower_thread_priority`),
so on a core shared with the event loop a build takes mostly the time the loop leaves
idle; the price is that a loop that never idles slows the build down (nice 19: to about
1.5% of the core) while it keeps serving. bench/rebuild.py measures both.

Contract:
- `upsert` is idempotent; it writes the row (O(dim)), moves at most a few rows from the
  delta into the graph (HNSW insertions), starts a build when one is due and never waits
  for it (with `background=False` it builds inline instead: tests only).
- A build `rebuild(wait=True)` waits for runs at normal priority (its caller is idle
  meanwhile); builds started by `upsert` or `rebuild(wait=False)` run at `build_nice`.
- `search` is best-first by inner product, never returns an excluded id, and returns
  min(k, len(index) - excluded present) results in both modes: when the graph yields
  too few survivors it widens the beam, then falls back to exact search.
- Thread-safety: `upsert`, `search` and `search_many` may be called from any thread
  (the worker calls them from its event-loop thread); one lock serialises them, and
  is uncontended there. Only the build runs in the background thread. It never reads a
  matrix being resized: `_grow` allocates a new matrix and the build keeps its
  reference to the old one, whose rows 0..size-1 are what it copies.
- `close()` stops the background thread (an in-flight build stops at its next chunk).
- Memory: once approximate, the graph holds its own copy of the vectors plus about
  2 * m * 4 bytes of links per node, retired nodes included (at most `rebuild_fraction`
  of the rows); during a rebuild two graphs coexist.

Satisfies `model.base.ItemIndex` structurally (no import between the two packages).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from operator import itemgetter
from typing import TypeVar

import faiss
import numpy as np

from model.base import Scored
from serving.ann import (
    Delta,
    Graph,
    HnswParams,
    Progress,
    build_graph,
    lower_thread_priority,
)

_INITIAL_CAPACITY = 1024
_score = itemgetter(0)
_T = TypeVar("_T")
# Makes one query's answer from the index's ids and its (scores, rows), best first.
_Answer = Callable[[list[str], list[float], list[int]], list[_T]]


def _scored(ids: list[str], scores: list[float], rows: list[int]) -> list[Scored]:
    return [Scored(ids[row], score) for score, row in zip(scores, rows, strict=True)]


def _ids_only(ids: list[str], scores: list[float], rows: list[int]) -> list[str]:
    return [ids[row] for row in rows]


log = logging.getLogger(__name__)


class FaissIndex:
    """Top-K by inner product: exact below `exact_below` items, HNSW + exact delta above.

    `exact_below`: catalogue size at which the first graph is built (default 20,000:
    exact search there still answers ~6k queries/s on one core, and an HNSW build takes
    about a second; see bench/ann.py). `delta_rows`: rows kept in the exact delta (its
    search costs O(delta_rows * dim) per query; the more it holds, the fewer changes
    reach the graph). `rebuild_fraction`: retired graph nodes, as a share of its rows,
    that make a fresh build due. `background=False` builds inline, in the `upsert` that
    makes one due (deterministic; for tests). `progress` is called from the building
    thread with (rows added, rows total). `build_nice`: the niceness of background
    builds (0, the default, keeps the caller's priority).
    """

    def __init__(
        self,
        dim: int,
        *,
        exact_below: int = 20_000,
        hnsw: HnswParams | None = None,
        delta_rows: int = 2_048,
        rebuild_fraction: float = 0.25,
        background: bool = True,
        progress: Progress | None = None,
        build_nice: int = 0,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, not {dim}")
        self.dim = dim
        self.exact_below = exact_below
        self.hnsw = hnsw or HnswParams()
        self.delta_rows = delta_rows
        self.rebuild_fraction = rebuild_fraction
        self.background = background
        self.build_nice = build_nice
        self._progress = progress
        self._vectors = np.zeros((_INITIAL_CAPACITY, dim), dtype=np.float32)
        self._ids: list[str] = []
        self._rows: dict[str, int] = {}
        self._lock = threading.Lock()
        # Approximate state: replaced together, under the lock, by `_install`.
        self._graph: Graph | None = None
        self._delta = Delta(dim)
        # Rows written since the in-flight build's copy began (None: no build).
        self._pending: set[int] | None = None
        self._builder: threading.Thread | None = None
        self._stop = threading.Event()
        self.builds = 0

    # --- reading --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._rows

    def ids(self) -> list[str]:
        return list(self._ids)

    def vector(self, item_id: str) -> np.ndarray:
        """A copy of the stored vector; KeyError for an unknown id."""
        with self._lock:
            row: np.ndarray = self._vectors[self._rows[item_id]]
            return row.copy()

    @property
    def approximate(self) -> bool:
        """True once a graph serves searches (it stays so: the catalogue never shrinks)."""
        return self._graph is not None

    @property
    def delta_size(self) -> int:
        return len(self._delta)

    @property
    def retired_nodes(self) -> int:
        """Graph nodes that no longer stand for a row (see `serving.ann.Graph`)."""
        graph = self._graph
        return 0 if graph is None else graph.retired

    # --- writing --------------------------------------------------------------------

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or replace vectors (shape (len(ids), dim)); idempotent, O(dim) each.
        A repeated id keeps its last vector. ValueError on a shape mismatch."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1 and len(ids) == 1:
            vectors = vectors.reshape(1, -1)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(
                f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}"
            )
        with self._lock:
            approximate, pending = self._graph is not None, self._pending
            for item_id, vector in zip(ids, vectors, strict=True):
                row = self._rows.get(item_id)
                if row is None:
                    row = len(self._ids)
                    if row == len(self._vectors):
                        self._grow()
                    self._rows[item_id] = row
                    self._ids.append(item_id)
                self._vectors[row] = vector
                if approximate:
                    self._delta.put(row, vector)
                if pending is not None:
                    pending.add(row)
            if approximate:
                self._spill(budget=2 * len(ids) + 8)
            due = self._rebuild_due()
        if due:
            self._start_build(self.build_nice)

    def rebuild(self, wait: bool = True) -> None:
        """Build a graph of the current matrix now, whatever its size (so a small
        index becomes approximate). With `wait`, block until it serves searches; a
        build already in flight is waited for first, and suffices when it left nothing
        in the delta. Without `wait`, start one unless one is in flight."""
        if not wait:
            self._start_build(self.build_nice)
            return
        self._join()
        with self._lock:
            graph = self._graph
            current = (
                graph is not None
                and graph.rows == len(self._ids)
                and not graph.retired
                and not self._delta
            )
        if not current:
            self._start_build(nice=0)
            self._join()

    def set_ef_search(self, ef_search: int) -> None:
        """Change the HNSW beam width for the serving graph and later builds (the
        recall/speed dial; see bench/ann.py). Takes effect at the next search."""
        with self._lock:
            self.hnsw = replace(self.hnsw, ef_search=ef_search)
            if self._graph is not None:
                self._graph.index.hnsw.efSearch = ef_search
                self._graph.ef_search = ef_search

    def close(self) -> None:
        """Stop building: an in-flight build ends at its next chunk; no new ones start.
        Searches and upserts keep working on the current graph and delta."""
        self._stop.set()
        self._join()

    def __enter__(self) -> FaissIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- searching ------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, exclude: Collection[str] = ()) -> list[Scored]:
        query = np.asarray(query, dtype=np.float32).reshape(1, self.dim)
        with self._lock:
            return self._search_locked(query, k, exclude)

    def search_many(
        self,
        queries: np.ndarray,
        k: int,
        excludes: Sequence[Collection[str]] | None = None,
    ) -> list[list[Scored]]:
        """`search` for each row of `queries` (shape (nq, dim)), in one FAISS call per
        structure; `excludes[i]` applies to query i. Same contract as `search`."""
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        nq = len(queries)
        if excludes is None:
            excludes = [()] * nq
        if len(excludes) != nq:
            raise ValueError(f"{nq} queries but {len(excludes)} exclude sets")
        return self._search_many(queries, k, excludes, _scored)

    def search_ids_many(self, queries: np.ndarray, k: int) -> list[list[str]]:
        """The ids of `search_many(queries, k)`, in its order: the same answers without
        a `Scored` per hit, which costs more than the rest of the merge (the torch
        model's batch retrieval reads only ids)."""
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        return self._search_many(queries, k, [()] * len(queries), _ids_only)

    def _search_many(
        self,
        queries: np.ndarray,
        k: int,
        excludes: Sequence[Collection[str]],
        answer: _Answer[_T],
    ) -> list[list[_T]]:
        nq = len(queries)
        with self._lock:
            graph, n = self._graph, len(self._ids)
            if k < 1 or n == 0 or nq == 0:
                return [[] for _ in range(nq)]
            banned = [self._banned_rows(ex) for ex in excludes]
            most_banned = max(len(b) for b in banned)
            if graph is None:  # exact: one brute-force pass for every query
                return self._exact_many(queries, k, banned, most_banned, answer)
            want = k + most_banned + min(len(self._delta), k)
            a_scores, a_rows = graph.search(queries, want)
            d_scores, d_rows = self._delta.search(queries, k + most_banned)
            targets = [min(k, n - len(ban)) for ban in banned]
            merged = self._merge_many(
                a_scores, a_rows, d_scores, d_rows, banned, targets, want >= graph.nodes
            )
            ids, results = self._ids, []
            for i, found in enumerate(merged):
                if found is None:  # too few survivors: the single-query path widens
                    slow = self._search_locked(queries[i][None], k, excludes[i])
                    found = [s.score for s in slow], [self._rows[s.item_id] for s in slow]
                results.append(answer(ids, *found))
            return results

    def _search_locked(self, query: np.ndarray, k: int, exclude: Collection[str]) -> list[Scored]:
        n = len(self._ids)
        if n == 0 or k < 1:
            return []
        banned = self._banned_rows(exclude)
        target = min(k, n - len(banned))
        if target < 1:
            return []
        graph = self._graph
        if graph is not None:
            # The delta answers k + excluded exactly; the graph is asked for a few
            # more, since its hits on rows now in the delta are stale and dropped.
            d_scores, d_rows = self._delta.search(query, k + len(banned))
            want, ef = k + len(banned) + min(len(self._delta), k), 0
            # Too few survivors (stale or excluded hits, or HNSW returning fewer than
            # asked): twice widen the answer and the beam, then search exactly.
            for _ in range(3):
                a_scores, a_rows = graph.search(query, want, ef)
                complete = want >= graph.nodes
                merged = self._merge(a_scores, a_rows, d_scores, d_rows, banned, target, complete)
                if merged is not None:
                    return merged
                if complete:
                    break
                want, ef = 2 * want, 4 * max(want, graph.ef_search)
        return self._exact(query, k, banned, target)

    def _banned_rows(self, exclude: Collection[str]) -> set[int]:
        rows = self._rows
        return {rows[item_id] for item_id in exclude if item_id in rows}

    def _merge(
        self,
        a_scores: np.ndarray,
        a_rows: np.ndarray,
        d_scores: np.ndarray,
        d_rows: np.ndarray,
        banned: set[int],
        target: int,
        complete: bool,
    ) -> list[Scored] | None:
        """Graph hits (minus retired nodes and stale delta rows) and delta hits,
        best-first.

        None unless `target` graph hits survive: a delta hit may only displace a graph
        hit, since graph rows past the ones returned were never compared. With
        `complete` (the graph was asked for all its nodes) the delta may fill in.
        """
        # Hot path (every query): comprehensions and C-level dict/set lookups only.
        stale = self._delta.slots
        hits: list[tuple[float, int]] = []
        if a_rows.size:
            pairs = zip(a_scores[0].tolist(), a_rows[0].tolist(), strict=True)
            hits = [p for p in pairs if p[1] >= 0 and p[1] not in banned and p[1] not in stale]
        if len(hits) < target and not complete:
            return None
        if d_rows.size:
            pairs = zip(d_scores[0].tolist(), d_rows[0].tolist(), strict=True)
            hits += [p for p in pairs if p[1] not in banned]
            # Both lists come best-first; a stable sort keeps each one's tie order.
            hits.sort(key=_score, reverse=True)
        if len(hits) < target:
            return None
        ids = self._ids
        return [Scored(ids[row], score) for score, row in hits[:target]]

    def _merge_many(
        self,
        a_scores: np.ndarray,
        a_rows: np.ndarray,
        d_scores: np.ndarray,
        d_rows: np.ndarray,
        banned: list[set[int]],
        targets: list[int],
        complete: bool,
    ) -> list[tuple[list[float], list[int]] | None]:
        """`_merge` of every query at once (row i with `banned[i]` and `targets[i]`),
        as (scores, rows): the same answers in the same order. Dropped hits get the
        score -inf, and one stable sort by score per row puts the graph's survivors and
        then the delta's, best-first, ahead of them, as `_merge`'s stable sort of the
        concatenation does. Two merges on purpose: for one query, `_merge`'s lists cost
        less than these arrays (a single search through this one measured 1.7x
        slower); test_faiss_index.py holds them equal."""
        nq = len(targets)
        if not a_rows.size:  # an empty answer comes unshaped
            a_scores, a_rows = np.empty((nq, 0), np.float32), np.empty((nq, 0), np.int64)
        if not d_rows.size:
            d_scores, d_rows = np.empty((nq, 0), np.float32), np.empty((nq, 0), np.int64)
        stale = np.zeros(len(self._ids), dtype=bool)
        stale[self._delta.rows()] = True
        graph_kept = (a_rows >= 0) & ~stale[np.maximum(a_rows, 0)]
        delta_kept = np.ones(d_rows.shape, dtype=bool)
        for i, ban in enumerate(banned):
            if ban:
                out = np.fromiter(ban, np.int64, len(ban))
                graph_kept[i] &= ~np.isin(a_rows[i], out)
                delta_kept[i] = ~np.isin(d_rows[i], out)
        from_graph = graph_kept.sum(axis=1)
        scores = np.hstack(
            [np.where(graph_kept, a_scores, -np.inf), np.where(delta_kept, d_scores, -np.inf)]
        )
        rows = np.hstack([a_rows, d_rows])
        survivors = from_graph + delta_kept.sum(axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")
        results: list[tuple[list[float], list[int]] | None] = []
        for i, target in enumerate(targets):
            if (from_graph[i] < target and not complete) or survivors[i] < target:
                results.append(None)
                continue
            best = order[i, :target]
            results.append((scores[i, best].tolist(), rows[i, best].tolist()))
        return results

    def _exact(self, query: np.ndarray, k: int, banned: set[int], target: int) -> list[Scored]:
        # Asking for k plus every excluded row guarantees k survivors whenever k
        # non-excluded items exist.
        n = len(self._ids)
        scores, rows = faiss.knn(
            query, self._vectors[:n], min(n, k + len(banned)), metric=faiss.METRIC_INNER_PRODUCT
        )
        results: list[Scored] = []
        for score, row in zip(scores[0].tolist(), rows[0].tolist(), strict=True):
            if row < 0:
                break
            if row in banned:
                continue
            results.append(Scored(self._ids[row], score))
            if len(results) == target:
                break
        return results

    def _exact_many(
        self,
        queries: np.ndarray,
        k: int,
        banned: list[set[int]],
        most_banned: int,
        answer: _Answer[_T],
    ) -> list[list[_T]]:
        n, ids = len(self._ids), self._ids
        scores, rows = faiss.knn(
            queries, self._vectors[:n], min(n, k + most_banned), metric=faiss.METRIC_INNER_PRODUCT
        )
        results = []
        for i, ban in enumerate(banned):
            pairs = zip(scores[i].tolist(), rows[i].tolist(), strict=True)
            kept = [(score, row) for score, row in pairs if row >= 0 and row not in ban]
            kept = kept[: min(k, n - len(ban))]
            results.append(answer(ids, [p[0] for p in kept], [p[1] for p in kept]))
        return results

    # --- building -------------------------------------------------------------------

    def _spill(self, budget: int) -> None:
        """Under the lock: move the delta's least recently changed rows into the graph
        until it holds `delta_rows`, at most `budget` of them (a delta left oversized by
        a build shrinks over the next upserts instead of in one pause)."""
        assert self._graph is not None
        excess = min(len(self._delta) - self.delta_rows, budget)
        if excess > 0:
            rows, vectors = self._delta.take_oldest(excess)
            self._graph.put(rows, vectors)

    def _rebuild_due(self) -> bool:
        if self._pending is not None or self._stop.is_set():
            return False
        if self._graph is None:
            return len(self._ids) >= self.exact_below
        return self._graph.retired >= max(1.0, self.rebuild_fraction * self._graph.rows)

    def _start_build(self, nice: int) -> None:
        with self._lock:
            if self._pending is not None or self._stop.is_set() or not self._ids:
                return
            # From here on every written row lands in `pending`; the copy of rows
            # 0..size-1 below may see some of them half-written, harmlessly, since
            # those rows will be in the new delta, which shadows the graph.
            self._pending = set()
            matrix, size = self._vectors, len(self._ids)
            if self.background:
                self._builder = threading.Thread(
                    target=self._build,
                    args=(matrix, size, nice),
                    name="faiss-index-build",
                    daemon=True,
                )
                self._builder.start()
                return
        self._build(matrix, size, nice=0)

    def _build(self, matrix: np.ndarray, size: int, nice: int) -> None:
        if nice > 0 and threading.current_thread() is self._builder:
            lower_thread_priority(nice)  # this thread only; it ends with the build
        try:
            graph = build_graph(matrix, size, self.hnsw, self._stop, self._progress)
        except Exception:
            log.exception("building the FAISS graph failed; serving the previous one")
            graph = None
        with self._lock:
            if graph is not None:
                self._install(graph)
            self._pending = None

    def _install(self, graph: Graph) -> None:
        """Under the lock: the new graph and its delta (rows written since its copy
        began, and rows added after it) replace the old pair in one step."""
        assert self._pending is not None
        delta = Delta(self.dim, capacity=max(256, 2 * len(self._pending)))
        new_rows = range(graph.rows, len(self._ids))
        for row in sorted(self._pending.union(new_rows)):
            delta.put(row, self._vectors[row])
        if graph.ef_search != self.hnsw.ef_search:  # set_ef_search during the build
            graph.index.hnsw.efSearch = self.hnsw.ef_search
            graph.ef_search = self.hnsw.ef_search
        self._graph, self._delta = graph, delta
        self.builds += 1

    def _join(self) -> None:
        builder = self._builder
        if builder is not None and builder is not threading.current_thread():
            builder.join()

    def _grow(self) -> None:
        bigger = np.zeros((len(self._vectors) * 2, self.dim), dtype=np.float32)
        bigger[: len(self._vectors)] = self._vectors
        self._vectors = bigger
