"""The in-process ceiling: the worker's per-event work with no Kafka and no Redis.

Runs the same `ClickProcessor` the worker runs (dedup, model update, FAISS upsert, the
item-delta bookkeeping, top-K, the recommendation event serialised) over the same kind
of stream, holding user records in a dict instead of a Faust table. The end-to-end
figure divided by this one is what the pipeline costs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from model.checkpoint import load_checkpoint
from serving.faiss_index import FaissIndex
from stream.events import Click
from stream.items.ledger import DeltaTracker
from stream.items.sync import encode_deltas
from stream.metrics import WorkerMetrics
from stream.worker.pipeline import ClickProcessor, UserRecord


def ceiling_events_per_s(
    checkpoint: Path, events: list[dict[str, Any]], dim: int = 64, top_k: int = 10
) -> dict[str, float]:
    index = FaissIndex(dim)
    model, _ = load_checkpoint(checkpoint, index=index, dim=dim)
    if len(index) >= index.exact_below:
        index.rebuild(wait=True)  # as the worker does before taking clicks
    tracker = DeltaTracker()
    processor = ClickProcessor(
        model,
        None,
        WorkerMetrics(),
        top_k=top_k,
        exclude="seen",
        dedup_window=128,
        tracker=tracker,
    )
    users: dict[str, bytes] = {}
    clicks = [
        Click(e["user_id"], e["item_id"], e["timestamp"], event_id=e["event_id"]) for e in events
    ]
    started = time.perf_counter()
    for offset, click in enumerate(clicks):
        raw = users.get(click.user_id)
        record = UserRecord.from_bytes(raw) if raw else processor.new_record()
        outcome = processor.process(
            click, record, click.event_id or "", click.timestamp, source="c0", offset=offset
        )
        users[click.user_id] = outcome.record.to_bytes()
        assert outcome.recommendation is not None
        outcome.recommendation.to_json()
        if tracker.pending > 256:
            encode_deltas(tracker.drain())  # the worker sends a batch's deltas
    seconds = time.perf_counter() - started
    close = getattr(index, "close", None)
    if close:
        close()
    return {"events": len(clicks), "seconds": seconds, "events_per_s": len(clicks) / seconds}
