"""A worker's catalogue side without Kafka (stream/worker/catalogue.py): new items start
from content as item deltas, and never-clicked items get their content vector again as
the mapping learns, until a click reaches them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from model.base import Interaction
from model.torch_model import TorchRecommender
from stream.catalogue import CatalogueItem
from stream.items.ledger import DeltaTracker, ItemLedger
from stream.metrics import WorkerMetrics
from stream.worker.availability import Unavailable
from stream.worker.catalogue import Catalogue


def catalogue_over(model: TorchRecommender) -> tuple[Catalogue, Any]:
    items = SimpleNamespace(vector_model=model, tracker=DeltaTracker(), ledger=ItemLedger())
    processor = SimpleNamespace(recommender=model, vector_version="", unavailable=Unavailable())
    catalogue = Catalogue(
        processor,  # type: ignore[arg-type]
        items,  # type: ignore[arg-type]
        WorkerMetrics(),
        max_event_bytes=1 << 16,
        embedding_dim=0,
    )
    return catalogue, items


def own(items: Any) -> None:
    """What the items' owner does with the deltas: apply each once (broadcast here)."""
    for delta in items.tracker.drain():
        items.ledger.apply(delta)


def test_new_items_start_from_content_and_are_refreshed_until_clicked() -> None:
    model = TorchRecommender(dim=8, seed=1)
    catalogue, items = catalogue_over(model)
    drama = [CatalogueItem(f"d{n}", title=f"drama {n}", categories=("drama",)) for n in range(6)]
    for item in drama:
        catalogue.take(item)
    # Known items are not started: their vectors come from clicks.
    model.set_item_vectors(["d0"], np.ones((1, 8), dtype=np.float32))
    assert catalogue.start_cold([(item, 2, n) for n, item in enumerate(drama)]) == 5
    assert {d.source for d in items.tracker._pending} == {"i2"}
    own(items)
    assert sorted(e.item_id for e in items.ledger) == ["d1", "d2", "d3", "d4", "d5"]

    # Clicks on d0 and d1 teach the mapping where dramas go.
    context = model.new_context()
    for t in range(40):
        item = "d0" if t % 2 else "d1"
        update = model.learn_one(context, Interaction("u", item, float(t)))
        context = update.context
    before = {e.item_id: e.vector.copy() for e in items.ledger}
    # d1 was clicked: the owner saw a click's delta for it.
    items.tracker.record("d1", before["d1"], before["d1"] + 1, source="c0", offset=9)
    own(items)

    assert catalogue.refresh() == 4  # d2..d5: started, never clicked, vector moved
    pending = items.tracker._pending
    assert sorted(d.item_id for d in pending) == ["d2", "d3", "d4", "d5"]
    assert {d.source for d in pending} == {"r2"}
    own(items)
    refreshed = items.ledger.get("d2").vector
    assert not np.allclose(refreshed, before["d2"])
    np.testing.assert_allclose(refreshed, model.content_vectors(["d2"])["d2"])
    assert "d1" not in catalogue.started
    # Nothing moved since: nothing to send.
    assert catalogue.refresh() == 0
