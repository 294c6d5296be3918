"""Benchmark inputs: a catalogue of N items as a torch checkpoint, and a click stream.

The stream is drawn with NumPy so that a 1M-item catalogue costs no more to sample from
than a small one: item popularity is Zipf-like (exponent 1.1) and, within a session, a
click follows its predecessor's fixed successor 70% of the time, so the model has real
sequential structure to learn. Deterministic for a seed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from model.checkpoint import save_checkpoint
from model.registry import build_recommender


def item_id(row: int) -> str:
    return f"i{row}"


def write_catalogue(path: Path, items: int, dim: int = 64, seed: int = 0) -> Path:
    """A torch checkpoint whose model knows `items` items, with vectors shaped like the
    model's own initial ones (N(0, 0.1^2) per coordinate). Returns `path`."""
    model = build_recommender("torch", dim=dim, seed=seed)
    rng = np.random.default_rng(seed)
    chunk = 100_000
    for start in range(0, items, chunk):
        rows = range(start, min(items, start + chunk))
        vectors = (rng.standard_normal((len(rows), dim)) * 0.1).astype(np.float32)
        model.set_item_vectors([item_id(r) for r in rows], vectors)  # type: ignore[attr-defined]
    save_checkpoint(model, path, version=f"bench-{items}")
    return path


def click_stream(
    n: int, *, items: int, users: int = 20_000, seed: int = 0, follow: float = 0.7
) -> list[dict[str, Any]]:
    """`n` click payloads keyed by user, with unique event ids and the current time."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, items + 1, dtype=np.float64)
    cumulative = np.cumsum(ranks**-1.1)
    popular = rng.permutation(items)
    successor = rng.permutation(items)
    user_of = rng.integers(0, users, n)
    fresh = popular[np.searchsorted(cumulative, rng.random(n) * cumulative[-1])]
    follows = rng.random(n) < follow
    last: dict[int, int] = {}
    now = time.time()
    events = []
    for i in range(n):
        user = int(user_of[i])
        previous = last.get(user)
        item = int(successor[previous]) if previous is not None and follows[i] else int(fresh[i])
        last[user] = item
        events.append(
            {
                "user_id": f"u{user}",
                "item_id": item_id(item),
                "event_id": f"b{seed}-{i}",
                "timestamp": now,
            }
        )
    return events
