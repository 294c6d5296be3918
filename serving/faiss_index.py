"""Exact FAISS inner-product index over item vectors that takes upserts while serving.

Vectors live in one growable float32 matrix with an id -> row map, so an upsert is a
row write (O(dim)), not the O(N) `IndexIDMap2.remove_ids` + `add` of a FAISS id map.
Search is FAISS's exact brute-force kernel (`faiss.knn`) over the filled rows.

Satisfies `model.base.ItemIndex` structurally (no import between the two packages).
Not thread-safe: the worker calls it from its single event-loop thread.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import faiss
import numpy as np

from model.base import Scored

_INITIAL_CAPACITY = 1024


class FaissIndex:
    """Exact top-K by inner product; upsert is idempotent and O(dim) per vector."""

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, not {dim}")
        self.dim = dim
        self._vectors = np.zeros((_INITIAL_CAPACITY, dim), dtype=np.float32)
        self._ids: list[str] = []
        self._rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._rows

    def ids(self) -> list[str]:
        return list(self._ids)

    def vector(self, item_id: str) -> np.ndarray:
        """A copy of the stored vector; KeyError for an unknown id."""
        return self._vectors[self._rows[item_id]].copy()

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        for item_id, vector in zip(ids, vectors, strict=True):
            row = self._rows.get(item_id)
            if row is None:
                row = len(self._ids)
                if row == len(self._vectors):
                    self._grow()
                self._rows[item_id] = row
                self._ids.append(item_id)
            self._vectors[row] = vector

    def search(
        self, query: np.ndarray, k: int, exclude: Collection[str] = ()
    ) -> list[Scored]:
        n = len(self._ids)
        if n == 0 or k < 1:
            return []
        excluded = exclude if isinstance(exclude, set | frozenset) else set(exclude)
        excluded_present = sum(1 for item_id in excluded if item_id in self._rows)
        # Asking for k plus every excluded id that exists guarantees k survivors
        # whenever k non-excluded items exist.
        want = min(n, k + excluded_present)
        query = np.asarray(query, dtype=np.float32).reshape(1, self.dim)
        scores, rows = faiss.knn(
            query, self._vectors[:n], want, metric=faiss.METRIC_INNER_PRODUCT
        )
        results: list[Scored] = []
        for score, row in zip(scores[0], rows[0], strict=True):
            if row < 0:
                break
            item_id = self._ids[row]
            if item_id in excluded:
                continue
            results.append(Scored(item_id, float(score)))
            if len(results) == k:
                break
        return results

    def _grow(self) -> None:
        bigger = np.zeros((len(self._vectors) * 2, self.dim), dtype=np.float32)
        bigger[: len(self._vectors)] = self._vectors
        self._vectors = bigger
