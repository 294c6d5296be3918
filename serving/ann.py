"""The two halves of `FaissIndex`'s approximate search: an HNSW snapshot and a delta.

A `Snapshot` is an HNSW graph (inner product) over rows 0..size-1 of the vector matrix
as they were when it was built. It is immutable once built, so any number of threads may
search it; it cannot remove or replace a vector (FAISS's HNSW has no removal).

A `Delta` holds the rows written since the snapshot's copy began, in one contiguous
buffer that is searched exactly. Hits the snapshot returns for a row in the delta are
stale and are dropped by the caller; the delta supplies that row's current score.

Both are plain data structures without locks: `FaissIndex` owns the locking.
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class Snapshot:
    index: faiss.IndexHNSWFlat
    size: int
    ef_search: int

    def search(self, queries: np.ndarray, want: int, ef: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Top `want` rows per query (row -1 pads a short answer: HNSW may return fewer
        than asked even when the graph holds more). Safe to call from several threads."""
        want = min(want, self.size)
        if want < 1:
            return _EMPTY_SCORES, _EMPTY_ROWS
        if ef > self.ef_search:
            # Missing from the stubs faiss ships, present in the library.
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = ef
            return self.index.search(queries, want, params=params)
        return self.index.search(queries, want)


def build_snapshot(
    matrix: np.ndarray,
    size: int,
    params: HnswParams,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
) -> Snapshot | None:
    """Build an HNSW snapshot of `matrix[:size]`; None if `stop` was set meanwhile.

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
    return Snapshot(index, size, params.ef_search)


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
    """Rows changed since a snapshot: a contiguous buffer searched by brute force.

    `put` is O(dim) (amortised: the buffer doubles when full); `search` is O(len * dim).
    """

    def __init__(self, dim: int, capacity: int = 256) -> None:
        self._vectors = np.zeros((max(capacity, 1), dim), dtype=np.float32)
        self._rows = np.zeros(max(capacity, 1), dtype=np.int64)
        self.slots: dict[int, int] = {}
        """Matrix row -> buffer slot; read it to test membership (do not write)."""

    def __len__(self) -> int:
        return len(self.slots)

    def __contains__(self, row: object) -> bool:
        return row in self.slots

    def put(self, row: int, vector: np.ndarray) -> None:
        slot = self.slots.get(row)
        if slot is None:
            slot = len(self.slots)
            if slot == len(self._rows):
                self._grow()
            self.slots[row] = slot
            self._rows[slot] = row
        self._vectors[slot] = vector

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
