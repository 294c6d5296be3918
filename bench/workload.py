"""Benchmark inputs: a catalogue of N items as a torch checkpoint, and a click stream.

The stream is drawn with NumPy so that a 1M-item catalogue costs no more to sample from
than a small one: item popularity is Zipf-like (exponent 1.1) and, within a session, a
click follows its predecessor's fixed successor 70% of the time, so the model has real
sequential structure to learn. Deterministic for a seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.checkpoint import save_checkpoint
from model.torch_model import TorchRecommender
from stream.dev.workload import arriving_users, click_stream, item_id

__all__ = ["arriving_users", "click_stream", "item_id", "write_catalogue"]


def write_catalogue(path: Path, items: int, dim: int = 64, seed: int = 0) -> Path:
    """A torch checkpoint whose model knows `items` items, with vectors shaped like the
    model's own initial ones (N(0, 0.1^2) per coordinate). Returns `path`."""
    model = TorchRecommender(dim=dim, seed=seed)
    rng = np.random.default_rng(seed)
    chunk = 100_000
    for start in range(0, items, chunk):
        rows = range(start, min(items, start + chunk))
        vectors = (rng.standard_normal((len(rows), dim)) * 0.1).astype(np.float32)
        model.set_item_vectors([item_id(r) for r in rows], vectors)
    save_checkpoint(model, path, version=f"bench-{items}")
    return path
