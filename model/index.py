"""Exact inner-product search over item vectors, in process, with NumPy and torch.topk.

`ExactIndex` is the `ItemIndex` the torch model uses in evaluation and tests: no
approximation, so a recall problem in the FAISS index from `serving/` can be told apart
from a model problem by swapping this one in.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch

from model.base import Scored


class ExactIndex:
    """Item vectors in one growable float32 matrix; exact top-k by inner product.

    `upsert` is O(1) per vector: a known id overwrites its row in place, a new id takes
    the next row, and the matrix doubles its capacity when full. `search` is O(N) over
    the rows. Ties are broken by row order (the order ids were first inserted), so the
    same upserts give the same results. Not thread-safe.

    >>> index = ExactIndex(2)
    >>> index.upsert(["a", "b", "c"], np.array([[1, 0], [0, 1], [2, 0]], dtype=np.float32))
    >>> [s.item_id for s in index.search(np.array([1, 0], dtype=np.float32), k=2)]
    ['c', 'a']
    >>> [s.item_id for s in index.search(np.array([1, 0], dtype=np.float32), k=5, exclude={"c"})]
    ['a', 'b']
    """

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        if dim < 1:
            raise ValueError(f"dim must be at least 1, not {dim}")
        self.dim = dim
        self._vectors = np.zeros((max(capacity, 1), dim), dtype=np.float32)
        self._ids: list[str] = []
        self._rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._rows

    @property
    def ids(self) -> list[str]:
        """Item ids in row order (a copy)."""
        return list(self._ids)

    def vector(self, item_id: str) -> np.ndarray:
        """A copy of one item's vector; KeyError if the id is unknown."""
        vector: np.ndarray = self._vectors[self._rows[item_id]].copy()
        return vector

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or replace vectors (shape (len(ids), dim)). Idempotent; a repeated id
        within one call keeps its last vector. ValueError on a shape mismatch."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1 and len(ids) == 1:
            vectors = vectors.reshape(1, -1)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(
                f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}"
            )
        for item_id, vector in zip(ids, vectors, strict=True):
            row = self._rows.get(item_id)
            if row is None:
                row = len(self._ids)
                if row == len(self._vectors):
                    grown = np.zeros((2 * len(self._vectors), self.dim), dtype=np.float32)
                    grown[:row] = self._vectors
                    self._vectors = grown
                self._rows[item_id] = row
                self._ids.append(item_id)
            self._vectors[row] = vector

    def search(self, query: np.ndarray, k: int, exclude: Collection[str] = ()) -> list[Scored]:
        """Best-first top-k by inner product; never returns an excluded id; returns
        min(k, len(self) - excluded ids present) results. `query` must be finite."""
        n = len(self._ids)
        if k <= 0 or n == 0:
            return []
        query = np.asarray(query, dtype=np.float32).reshape(self.dim)
        return self._top(self._vectors[:n] @ query, k, exclude)

    def search_many(
        self, queries: np.ndarray, k: int, excludes: Sequence[Collection[str]]
    ) -> list[list[Scored]]:
        """`search(queries[i], k, excludes[i])` for each row of `queries` (shape
        (n, dim)): the same results, bit for bit. ValueError if the counts differ."""
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if len(queries) != len(excludes):
            raise ValueError(f"{len(queries)} queries but {len(excludes)} exclude sets")
        n = len(self._ids)
        if k <= 0 or n == 0:
            return [[] for _ in excludes]
        vectors = self._vectors[:n]
        # One matrix-vector product per query, as `search` computes it: a single matrix
        # product rounds differently, which would reorder near-ties.
        return [self._top(vectors @ q, k, ex) for q, ex in zip(queries, excludes, strict=True)]

    def _top(self, scores: np.ndarray, k: int, exclude: Collection[str]) -> list[Scored]:
        """The best k rows of `scores` (one per stored row) not in `exclude`."""
        n = len(scores)
        banned = {self._rows[i] for i in exclude if i in self._rows}
        # Every excluded row could be among the best, so take that many extra candidates
        # and filter afterwards: an O(N) selection, never a full sort.
        m = min(k + len(banned), n)
        if m < n:
            # torch.topk is several times faster than np.argpartition at this size.
            kth = float(torch.topk(torch.from_numpy(scores), m, sorted=False).values.min())
            # Which members of a tie at the boundary topk keeps is unspecified; taking
            # the tied rows in row order keeps results independent of its internals.
            above = np.flatnonzero(scores > kth)
            tied = np.flatnonzero(scores == kth)[: m - len(above)]
            candidates = np.concatenate([above, tied])
        else:
            candidates = np.arange(n)
        # lexsort's last key is primary: score descending, then row ascending.
        order = candidates[np.lexsort((candidates, -scores[candidates]))]
        results: list[Scored] = []
        for row in order.tolist():
            if row in banned:
                continue
            results.append(Scored(self._ids[row], float(scores[row])))
            if len(results) == k:
                break
        return results
