"""How long a worker takes to write its vectors back to a Redis that lost them.

    python -m bench.redis_repair [--items 100000] [--users 100000] [--json out.json]

Issue 14: a Redis that restarts empty is repaired by the worker that notices its marker
key gone (stream/worker/redis_health.py). This starts the embedded Redis-protocol server,
fills a `FaissIndex` and an item ledger with `--items` model-like 64-d vectors (each with a
canonical version, as the live worker holds them) and a publisher with `--users` written
user vectors, then times `RedisRepair.repair` into the empty server: the same
compare-and-set writes, in the same chunks, the worker makes. It prints the items' and
users' write times, and the whole repair. Detection adds up to one marker check
interval (1 s) on top.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import numpy as np

from bench.ann import model_like
from serving.faiss_index import FaissIndex
from serving.redis_store import RedisVectorStore
from stream.dev.services import running_stack
from stream.items.ledger import CanonicalVector, ItemLedger
from stream.metrics import WorkerMetrics
from stream.worker.item_owner import write_all_items
from stream.worker.publisher import VectorPublisher
from stream.worker.redis_health import RedisRepair


async def measure(redis_url: str, items: int, users: int) -> dict[str, Any]:
    vectors, _ = model_like(items, 1, seed=1)  # dim: bench.ann.DIM
    dim = vectors.shape[1]
    ids = [f"i{n}" for n in range(items)]
    index = FaissIndex(dim)
    index.upsert(ids, vectors)
    ledger = ItemLedger()
    for item_id, vector in zip(ids, vectors, strict=True):
        ledger.observe(CanonicalVector(item_id, vector, version=1_700_000_000_000_000))
    store = RedisVectorStore.from_url(redis_url, prefix="bench:", user_ttl_s=3600)
    metrics = WorkerMetrics()
    publisher = VectorPublisher(store, metrics)
    rng = np.random.default_rng(2)
    user_vectors = rng.standard_normal((users, dim)).astype("<f4")
    publisher.written_users = {
        f"u{n}": (user_vectors[n].tobytes(), 1_700_000_000_000_000 + n) for n in range(users)
    }
    timings: dict[str, float] = {}

    async def timed_items() -> int:
        started = time.perf_counter()
        written = await write_all_items(store, index, ledger)
        timings["items_s"] = time.perf_counter() - started
        return written

    async def timed_users() -> int:
        started = time.perf_counter()
        written = await publisher.write_all_users()
        timings["users_s"] = time.perf_counter() - started
        return written

    repair = RedisRepair(
        store, publisher.link, metrics, write_items=timed_items, write_users=timed_users
    )
    try:
        started = time.perf_counter()
        written_items, written_users = await repair.repair()
        total = time.perf_counter() - started
    finally:
        await store.close()
    assert (written_items, written_users) == (items, users), (written_items, written_users)
    return {
        "redis_repair_items": items,
        "redis_repair_users": users,
        "redis_repair_items_s": round(timings["items_s"], 3),
        "redis_repair_users_s": round(timings["users_s"], 3),
        "redis_repair_total_s": round(total, 3),
        "redis_repair_us_per_item": round(timings["items_s"] / max(items, 1) * 1e6, 2),
        "redis_repair_us_per_user": round(timings["users_s"] / max(users, 1) * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    with running_stack() as stack:
        figures = asyncio.run(measure(stack.redis_url, args.items, args.users))
    print(
        f"Redis repair: {figures['redis_repair_items']:,} items in "
        f"{figures['redis_repair_items_s']:.2f} s ({figures['redis_repair_us_per_item']} us "
        f"each), {figures['redis_repair_users']:,} users in "
        f"{figures['redis_repair_users_s']:.2f} s; whole repair "
        f"{figures['redis_repair_total_s']:.2f} s"
    )
    print(json.dumps(figures))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out)


if __name__ == "__main__":
    main()
