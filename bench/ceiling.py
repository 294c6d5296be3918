"""The in-process ceiling: the worker's per-event work with no Kafka and no Redis.

Runs the same `ClickProcessor` the worker runs, with the worker's default model step
and batch size (dedup, model update, FAISS upsert, the item-delta bookkeeping, top-K,
the recommendation events serialised, the user records encoded) over the same kind of
stream, in full batches as a worker with a backlog takes them, holding user records in
a dict instead of a Faust table. The end-to-end figure divided by this one is what the
pipeline costs.

`model_events_per_s` is the model's share of it at a given batch size: `learn_many`
and `recommend_many` over chunks of the same stream, with the worker's exclusion of the
user's recent items, on the same FAISS index; batch 1 calls the one-event methods.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any

from model.base import Interaction, Recommender, UserContext
from model.checkpoint import load_checkpoint
from model.content import ItemContent
from model.registry import build_recommender
from model.variants import Arm, variants
from serving.faiss_index import FaissIndex
from stream.events import Click
from stream.items.ledger import DeltaTracker
from stream.items.sync import encode_deltas
from stream.metrics import WorkerMetrics
from stream.settings import Settings
from stream.worker.pipeline import Accepted, ClickProcessor, UserRecord
from stream.worker.process import freeze_startup_heap


def ceiling_events_per_s(
    checkpoint: Path,
    events: list[dict[str, Any]],
    dim: int = 64,
    top_k: int = 10,
    second_variant: str | None = None,
    content: bool = False,
) -> dict[str, float]:
    """`content`: give the model a catalogue first (`catalogue_contents`: every item
    it knows, so none is cold; the content mapping then learns from every click).
    `second_variant`: run an A/B experiment of the checkpoint's model against a
    second arm at 50:50 (STREAMREC_VARIANTS): `torch`, the same checkpoint again over
    an index of its own (two torch checkpoints), or a fresh baseline by name."""
    index = FaissIndex(dim)
    model: Recommender
    model, _ = load_checkpoint(checkpoint, index=index, dim=dim)
    indexes = [index]
    if content:
        model.set_content(catalogue_contents(model))  # type: ignore[attr-defined]
    if second_variant is not None:
        if second_variant == "torch":
            indexes.append(FaissIndex(dim))
            other, _ = load_checkpoint(checkpoint, index=indexes[-1], dim=dim)
        else:
            other = build_recommender(second_variant)
        model = variants([Arm("first", model, 1), Arm("second", other, 1)], salt="bench")
    for each in indexes:
        if len(each) >= each.exact_below:
            each.rebuild(wait=True)  # as the worker does before taking clicks
    freeze_startup_heap()  # as the worker does once it is built
    tracker = DeltaTracker()
    defaults = Settings()
    processor = ClickProcessor(
        model,
        None,
        WorkerMetrics(),
        top_k=top_k,
        exclude="seen",
        dedup_window=128,
        batched=defaults.model_step == "batch",
        tracker=tracker,
    )
    users: dict[bytes, bytes] = {}

    def record_of(key: bytes) -> UserRecord | None:
        raw = users.get(key)
        return UserRecord.from_bytes(raw) if raw else None

    accepted = [
        Accepted(
            Click(e["user_id"], e["item_id"], e["timestamp"], event_id=e["event_id"]),
            e["user_id"].encode(),
            e["event_id"],
            e["timestamp"],
            "c0",
            offset,
        )
        for offset, e in enumerate(events)
    ]
    started = time.perf_counter()
    for start in range(0, len(accepted), defaults.batch_size):
        outcome = processor.process_batch(accepted[start : start + defaults.batch_size], record_of)
        assert len(outcome.values) == len(outcome.applied)
        for key, record in outcome.records.items():
            users[key] = record.to_bytes()
        encode_deltas(tracker.drain())  # the worker sends a batch's deltas
    seconds = time.perf_counter() - started
    for each in indexes:
        each.close()
    return {
        "events": len(accepted),
        "batch_size": defaults.batch_size,
        "seconds": seconds,
        "events_per_s": len(accepted) / seconds,
    }


def catalogue_contents(model: Any, categories: int = 50) -> dict[str, ItemContent]:
    """A synthetic catalogue of every item `model` has a row for: a title of three
    words and one of `categories` categories, each drawn from the item's id."""
    contents = {}
    for item_id in model.encoder.ids:
        n = zlib.crc32(item_id.encode())
        words = " ".join(f"w{(n >> shift) % 500}" for shift in (0, 9, 18))
        contents[item_id] = ItemContent(title=words, categories=(f"c{n % categories}",))
    return contents


def model_events_per_s(
    checkpoint: Path,
    events: list[dict[str, Any]],
    batch_size: int,
    dim: int = 64,
    top_k: int = 10,
) -> dict[str, float]:
    """Events per second through the model alone, learning and ranking, at `batch_size`.
    `cpu_events_per_s` counts the calling thread's CPU time only: the index's snapshot
    rebuilds run on a thread of their own, and other processes' load drops out."""
    index = FaissIndex(dim)
    model, _ = load_checkpoint(checkpoint, index=index, dim=dim)
    if len(index) >= index.exact_below:
        index.rebuild(wait=True)
    freeze_startup_heap()
    contexts: dict[str, UserContext] = {}
    clicks = [Interaction(e["user_id"], e["item_id"], e["timestamp"]) for e in events]
    started, cpu_started = time.perf_counter(), time.thread_time()
    for start in range(0, len(clicks), batch_size):
        chunk = clicks[start : start + batch_size]
        if batch_size == 1:
            click = chunk[0]
            update = model.learn_one(contexts.get(click.user_id, model.new_context()), click)
            contexts[click.user_id] = update.context
            model.recommend(update.context, top_k, set(update.context.recent))
            continue
        before = {c.user_id: contexts.get(c.user_id, model.new_context()) for c in chunk}
        after = [update.context for update in model.learn_many(before, chunk)]
        for click, context in zip(chunk, after, strict=True):
            contexts[click.user_id] = context
        model.recommend_many(after, top_k, [set(context.recent) for context in after])
    seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
    index.close()
    return {
        "events": len(clicks),
        "batch_size": batch_size,
        "seconds": seconds,
        "events_per_s": len(clicks) / seconds,
        "cpu_events_per_s": len(clicks) / cpu,
    }
