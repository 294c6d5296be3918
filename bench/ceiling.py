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

Run alone, it prints the ceiling of a fresh catalogue (or `--catalogue`) for a number
of runs, each with `cpu_us_per_click`: the CPU time of the thread applying the batches,
which leaves out the index's background builds and other processes' load, so it is the
figure to compare before and after a change on a shared machine:

    python -m bench.ceiling --events 10000 --items 100000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
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
    started, cpu_started = time.perf_counter(), time.thread_time()
    for start in range(0, len(accepted), defaults.batch_size):
        outcome = processor.process_batch(accepted[start : start + defaults.batch_size], record_of)
        assert len(outcome.values) == len(outcome.applied)
        for key, record in outcome.records.items():
            users[key] = record.to_bytes()
        encode_deltas(tracker.drain())  # the worker sends a batch's deltas
    seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
    for each in indexes:
        each.close()
    return {
        "events": len(accepted),
        "batch_size": defaults.batch_size,
        "seconds": seconds,
        "events_per_s": len(accepted) / seconds,
        "cpu_us_per_click": cpu / len(accepted) * 1e6,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="clicks per run")
    parser.add_argument(
        "--users", type=int, default=None, help="distinct users (default: events / 10)"
    )
    parser.add_argument("--items", type=int, default=100_000, help="catalogue size")
    parser.add_argument(
        "--catalogue", type=Path, default=None, help="a torch checkpoint to use instead"
    )
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if args.events < 1 or args.runs < 1 or args.items < 1:
        parser.error("--events, --items and --runs must be at least 1")
    # One thread, as a worker on its core runs (bench/e2e.py pins it).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from bench.workload import click_stream, write_catalogue

    users = args.users or max(100, args.events // 10)
    stream = click_stream(args.events, items=args.items, users=users, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        catalogue = args.catalogue
        if catalogue is None:
            print(f"writing a {args.items}-item catalogue ...", flush=True)
            catalogue = write_catalogue(Path(tmp) / "catalogue.pt", args.items)
        runs = []
        for run in range(args.runs):
            result = ceiling_events_per_s(catalogue, stream)
            runs.append(result)
            print(
                f"run {run + 1}: {result['events_per_s']:,.0f} events/s, "
                f"{result['cpu_us_per_click']:,.0f} us of CPU per click",
                flush=True,
            )
    cpu = sorted(r["cpu_us_per_click"] for r in runs)
    summary = {"events": args.events, "users": users, "items": args.items, "runs": runs}
    summary["median_cpu_us_per_click"] = cpu[len(cpu) // 2]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
