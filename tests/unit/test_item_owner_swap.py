"""A live model swap and the item-vector protocol (stream/worker/item_owner.py): after
`swap`, vectors of the model swapped out never reach the new model or its index."""

from __future__ import annotations

from typing import Any

import numpy as np

from model import build_recommender
from serving.faiss_index import FaissIndex
from stream.items.ledger import CanonicalVector, DeltaTracker
from stream.metrics import WorkerMetrics
from stream.security import PLAINTEXT
from stream.settings import Settings
from stream.worker.item_owner import ItemOwner


def owner(model: Any, index: FaissIndex, version: str) -> ItemOwner:
    return ItemOwner(
        Settings(),
        PLAINTEXT,
        index=index,
        vector_model=model,
        tracker=DeltaTracker(),
        publisher=None,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        metrics=WorkerMetrics(),
        deltas_topic=None,
        vectors_topic=None,
        model_version=version,
    )


def vec(value: float) -> np.ndarray:
    return np.full(4, value, dtype=np.float32)


def test_after_a_swap_only_the_new_models_broadcasts_are_copied_in() -> None:
    old_index, new_index = FaissIndex(4), FaissIndex(4)
    old_model = build_recommender("torch", dim=4, index=old_index)
    new_model = build_recommender("torch", dim=4, index=new_index)
    items = owner(old_model, old_index, "gru:old")
    items.take_canonical([CanonicalVector("x", vec(1), 10, {}, model="gru:old")])
    np.testing.assert_array_equal(old_index.vector("x"), vec(1))

    new_model.set_item_vectors(["x"], vec(5)[None])  # type: ignore[attr-defined]
    new_index.upsert(["x"], vec(5)[None])
    items.swap(new_model, new_index, "gru:new")  # type: ignore[arg-type]
    # The old model's vector again (a replayed record) and a later one of the old model
    # (a worker that has not swapped yet): neither reaches the new model.
    items.take_canonical([CanonicalVector("x", vec(1), 10, {}, model="gru:old")])
    items.take_canonical([CanonicalVector("x", vec(2), 11, {}, model="gru:old")])
    np.testing.assert_array_equal(new_index.vector("x"), vec(5))
    np.testing.assert_array_equal(new_model.item_vector("x"), vec(5))  # type: ignore[attr-defined]
    items.take_canonical([CanonicalVector("x", vec(6), 12, {}, model="gru:new")])
    np.testing.assert_array_equal(new_index.vector("x"), vec(6))
    np.testing.assert_array_equal(new_model.item_vector("x"), vec(6))  # type: ignore[attr-defined]
