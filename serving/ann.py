"""The two halves of `FaissIndex`'s approximate search: an HNSW graph and a delta.

A `Graph` is an HNSW graph (inner product) over rows of the vector matrix. FAISS's HNSW
can add a node but never remove or move one, so a row's newer vector joins as a new node
and its old node is retired (see `Graph`). Full builds (`build_graph`) start it over.

A `Delta` holds the rows changed most recently, in one contiguous buffer that is
searched exactly: a row that changes often stays there and never costs a graph node per
change. Graph hits on a row in the delta are stale and are dropped by the caller; the
delta supplies that row's current score.

Both are plain data structures without locks: `FaissIndex` owns the locking.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

Progress = Callable[[int, int], None]
"""Called as `progress(rows_added, rows_total)` while a snapshot is built."""

_BUILD_CHUNK = 16_384
_EMPTY_SCORES = np.empty((0, 0), dtype=np.float32)
_EMPTY_ROWS = np.empty((0, 0), dtype=np.int64)


@dataclass(frozen=True, slots=True)
class HnswParams:
    """HNSW parameters; the defaults are chosen from measurements by bench/ann.py.

    `m`: graph degree (level 0 keeps 2*m links). `ef_construction`: beam width while
    building. `ef_search`: beam width per query; a search asking for more than
    `ef_search` results widens the beam to the number asked for.
    """

    m: int = 16
    ef_construction: int = 40
    ef_search: int = 32


class Graph:
    """An HNSW graph (inner product) over vector-matrix rows that takes new versions of
    rows in place.

    `put` adds each row's vector as a new node and retires the row's old node, if any:
    its stored vector is zeroed, so it scores 0 for every query and falls behind any
    answer that points the query's way, while its links keep routing searches; a retired
    node that is still returned maps to row -1. Retired nodes cost memory and detours,
    so the owner rebuilds from scratch once `retired` is a large share of `rows`.

    Searches may run from several threads at once, but never during a `put`: the owner
    serialises writes against everything else.
    """

    def __init__(self, index: faiss.IndexHNSWFlat, rows: int, ef_search: int) -> None:
        """`index` holds rows 0..rows-1 as nodes 0..rows-1."""
        self.index = index
        self.ef_search = ef_search
        self.retired = 0
        self._node_rows = np.arange(max(rows, 1), dtype=np.int64)
        self._row_nodes: dict[int, int] = {}  # rows whose node is not their own number
        self._base = rows  # rows below this start as their own node

    @property
    def nodes(self) -> int:
        """Nodes in the graph, retired ones included."""
        return int(self.index.ntotal)

    @property
    def rows(self) -> int:
        """Rows the graph holds (one live node each)."""
        return self.nodes - self.retired

    def holds(self, row: int) -> bool:
        return row in self._row_nodes or row < self._base

    def search(self, queries: np.ndarray, want: int, ef: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Top `want` (scores, rows) per query; row -1 marks a retired node or pads a
        short answer (HNSW may return fewer than asked even when the graph holds more)."""
        want = min(want, self.nodes)
        if want < 1:
            return _EMPTY_SCORES, _EMPTY_ROWS
        if ef > self.ef_search:
            # Missing from the stubs faiss ships, present in the library.
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = ef
            scores, nodes = self.index.search(queries, want, params=params)
        else:
            scores, nodes = self.index.search(queries, want)
        rows: np.ndarray = np.where(nodes >= 0, self._node_rows[np.maximum(nodes, 0)], -1)
        return scores, rows

    def put(self, rows: list[int], vectors: np.ndarray) -> None:
        """Make `vectors` (one per row, rows distinct) the graph's vectors of `rows`."""
        if not rows:
            return
        first = self.nodes
        old = [self._node_of(row) for row in rows]
        retiring = [node for node in old if node >= 0]
        if retiring:
            self._stored()[retiring] = 0.0
            self._node_rows[retiring] = -1
            self.retired += len(retiring)
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        if self.nodes > len(self._node_rows):
            grown = np.full(max(2 * len(self._node_rows), self.nodes), -1, dtype=np.int64)
            grown[: len(self._node_rows)] = self._node_rows
            self._node_rows = grown
        for offset, row in enumerate(rows):
            self._node_rows[first + offset] = row
            self._row_nodes[row] = first + offset

    def _node_of(self, row: int) -> int:
        node = self._row_nodes.get(row)
        if node is None:
            return row if row < self._base else -1
        return node

    def _stored(self) -> np.ndarray:
        """The graph's own copy of the node vectors, as a writable view (valid until
        the next `add`, which may move it)."""
        flat = faiss.downcast_index(self.index.storage)
        dim = self.index.d
        # IndexFlat.get_xb is missing from the stubs faiss ships, present in the library.
        buffer = faiss.rev_swig_ptr(flat.get_xb(), self.nodes * dim)  # type: ignore[attr-defined]
        stored: np.ndarray = buffer.reshape(self.nodes, dim)
        return stored


def build_graph(
    matrix: np.ndarray,
    size: int,
    params: HnswParams,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
) -> Graph | None:
    """Build an HNSW graph of `matrix[:size]`; None if `stop` was set meanwhile.

    Blocks for the whole build (seconds per 100k rows on one core); FAISS releases the
    GIL while adding, so other Python threads keep running. `matrix` may be written by
    another thread during the build: each chunk is copied before it is added, and a row
    rewritten after the build began must be in the caller's delta, which shadows it.
    """
    index = faiss.IndexHNSWFlat(matrix.shape[1], params.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params.ef_construction
    index.hnsw.efSearch = params.ef_search
    for start in range(0, size, _BUILD_CHUNK):
        if stop is not None and stop.is_set():
            return None
        chunk = np.array(matrix[start : min(start + _BUILD_CHUNK, size)], dtype=np.float32)
        index.add(chunk)
        if progress is not None:
            progress(start + len(chunk), size)
    return Graph(index, size, params.ef_search)


def lower_thread_priority(nice: int) -> bool:
    """Raise the calling thread's niceness to `nice`; True if it now runs at that level.

    On Linux a nice value belongs to one thread, so a build thread can yield its core
    to the event-loop thread that serves queries without slowing it: the scheduler
    gives a nice-19 thread about 1.5% of a core that a nice-0 thread also wants, and
    the whole core when that thread idles. Elsewhere it would renice the whole process,
    so it does nothing. Never raises (an unprivileged thread cannot lower its niceness:
    a process already niced past `nice` keeps its level). FAISS's OpenMP helper threads,
    when there are several, keep their own level: the worker runs FAISS on one thread.
    """
    if nice <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError:
        return False
    return True


class Delta:
    """Rows changed since they were last put in the graph: a contiguous buffer searched
    by brute force, kept in the order the rows last changed.

    `put` and `take_oldest` are O(dim) per row (amortised: the buffer doubles when full);
    `search` is O(len * dim).
    """

    def __init__(self, dim: int, capacity: int = 256) -> None:
        self._vectors = np.zeros((max(capacity, 1), dim), dtype=np.float32)
        self._rows = np.zeros(max(capacity, 1), dtype=np.int64)
        self.slots: dict[int, int] = {}
        """Matrix row -> buffer slot, least recently changed first; read it to test
        membership (do not write)."""

    def __len__(self) -> int:
        return len(self.slots)

    def __contains__(self, row: object) -> bool:
        return row in self.slots

    def rows(self) -> np.ndarray:
        """The matrix rows the delta holds, in slot order (a view: read it before the
        next `put` or `take_oldest`)."""
        rows: np.ndarray = self._rows[: len(self.slots)]
        return rows

    def put(self, row: int, vector: np.ndarray) -> None:
        slot = self.slots.pop(row, None)
        if slot is None:
            slot = len(self.slots)
            if slot == len(self._rows):
                self._grow()
            self._rows[slot] = row
        self.slots[row] = slot  # (re)inserted last: the most recently changed
        self._vectors[slot] = vector

    def take_oldest(self, count: int) -> tuple[list[int], np.ndarray]:
        """Remove the `count` least recently changed rows; their rows and vectors."""
        rows = list(itertools.islice(self.slots, count))
        vectors = np.empty((len(rows), self._vectors.shape[1]), dtype=np.float32)
        for i, row in enumerate(rows):
            slot = self.slots.pop(row)
            vectors[i] = self._vectors[slot]
            last = len(self.slots)
            if slot != last:  # the last slot's row moves into the hole
                moved = int(self._rows[last])
                self._rows[slot] = moved
                self._vectors[slot] = self._vectors[last]
                self.slots[moved] = slot  # an existing key keeps its place in the order
        return rows, vectors

    def search(self, queries: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top `want` (scores, matrix rows) per query over the delta's rows."""
        count = len(self.slots)
        want = min(want, count)
        if want < 1:
            return _EMPTY_SCORES, _EMPTY_ROWS
        scores, slots = faiss.knn(
            queries, self._vectors[:count], want, metric=faiss.METRIC_INNER_PRODUCT
        )
        return scores, self._rows[slots]

    def _grow(self) -> None:
        size = len(self._rows)
        vectors = np.zeros((2 * size, self._vectors.shape[1]), dtype=np.float32)
        vectors[:size] = self._vectors
        rows = np.zeros(2 * size, dtype=np.int64)
        rows[:size] = self._rows
        self._vectors, self._rows = vectors, rows
