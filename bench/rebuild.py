"""What an index rebuild costs the thread that serves queries, on one shared core.

    python -m bench.rebuild [--items 100000] [--seconds 2] [--json out.json]

The worker serves every query from its event-loop thread, and `FaissIndex` rebuilds its
HNSW snapshot in a background thread of the same process, pinned to the same core. This
script pins itself to one core and FAISS to one OpenMP thread (as the worker runs), fills
a `FaissIndex` with model-like vectors (bench/ann.py), and times `search` top-50 queries
from a loop busy `--load` of every 10 ms (a worker at 70% of its rate, by default): with
no build running, during a background build at normal priority (`build_nice=0`, the
index's default), and during one at `--nice` (19 by default); then from a loop that never
idles during a `--nice` build, cut off after `--starve-s` (a saturated loop starves a
niced build: the delta grows meanwhile). For each: query latency
p50/p99/max (wall time, so time the build takes from the loop counts), queries/s over
the no-build run's, and the build's wall time, CPU seconds (process CPU minus the query
thread's) and whether it finished.

It also prints what keeping the graph current costs per click, amortised. A click
changes the clicked item and the user's previous one; changed rows wait in the index's
exact delta (`delta_rows`, least recently changed out first), and each row that leaves
it is inserted into the live graph (`rebuild_add_us_per_row`, timed into a graph of the
same size), retiring its old node; a build is due once retired nodes reach
`rebuild_fraction * items`. Both counts come from replaying the benchmark's click
stream (bench/workload.py) through a delta of that size: `rebuild_spill_us_per_click`
is the insertions' CPU per click, `rebuild_cpu_us_per_click` the builds'.
`run()` returns the figures for bench/run.py under `rebuild_*` keys.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from bench.ann import DIM, model_like  # noqa: E402
from bench.workload import click_stream  # noqa: E402
from serving.ann import HnswParams, build_graph  # noqa: E402
from serving.faiss_index import FaissIndex  # noqa: E402

K = 50


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def query_loop(
    index: FaissIndex,
    queries: np.ndarray,
    until: Callable[[], bool],
    load: float,
    min_s: float = 0.0,
    max_s: float = float("inf"),
) -> dict[str, float]:
    """`search` calls for `load` of every 10 ms (1.0: back to back, a loop that never
    idles), until `until()` is true and `min_s` has passed, or `max_s` has."""
    waits: list[float] = []
    start, thread_cpu = time.perf_counter(), time.thread_time()
    i = 0
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= max_s or (elapsed >= min_s and until()):
            break
        busy_until = time.perf_counter() + 0.010 * load
        while time.perf_counter() < busy_until:
            t = time.perf_counter()
            index.search(queries[i % len(queries)], K)
            waits.append(time.perf_counter() - t)
            i += 1
        if load < 1.0:
            time.sleep(0.010 * (1.0 - load))
    wall = time.perf_counter() - start
    return {
        "seconds": wall,
        "queries": len(waits),
        "qps": len(waits) / wall,
        "query_cpu_s": time.thread_time() - thread_cpu,
        "p50_us": percentile(waits, 50) * 1e6,
        "p99_us": percentile(waits, 99) * 1e6,
        "max_us": max(waits) * 1e6,
    }


def during_build(
    index: FaissIndex,
    queries: np.ndarray,
    nice: int,
    load: float,
    progress: list[int],
    max_s: float = float("inf"),
) -> dict[str, float]:
    """Queries while one background build at `nice` runs (or until `max_s`)."""
    index.build_nice = nice
    builds, process_cpu = index.builds, time.process_time()
    progress[0] = 0
    index.rebuild(wait=False)
    figures = query_loop(index, queries, lambda: index.builds > builds, load, max_s=max_s)
    figures["build_wall_s"] = figures["seconds"]
    figures["build_cpu_s"] = time.process_time() - process_cpu - figures["query_cpu_s"]
    figures["build_done"] = float(index.builds > builds)
    figures["build_rows_done"] = float(progress[0])
    return figures


def add_cost_us(vectors: np.ndarray, rows: int = 1_000) -> float:
    """CPU per row of inserting `rows` more vectors into an HNSW graph of `vectors`."""
    index = build_graph(vectors, len(vectors), HnswParams())
    assert index is not None
    extra = vectors[:rows] + np.float32(0.01)
    start = time.thread_time()
    index.index.add(extra)
    return (time.thread_time() - start) / rows * 1e6


def clicks_per_build(
    items: int, delta_rows: int, retired: int, seed: int = 1, most: int = 500_000
) -> tuple[float, float]:
    """Replays the benchmark stream through a delta of `delta_rows` rows: the clicks it
    takes until `retired` rows have left it for the graph (nan if more than `most`),
    and the rows that leave it per click."""
    delta: OrderedDict[str, None] = OrderedDict()
    last: dict[str, str] = {}
    spilled = clicks = 0
    stream = click_stream(most, items=items, users=max(100, most // 10), seed=seed)
    for clicks, event in enumerate(stream, 1):  # noqa: B007 (read after the loop)
        user, item = event["user_id"], event["item_id"]
        for row in (item, last[user]) if user in last else (item,):
            if row in delta:
                delta.move_to_end(row)
                continue
            delta[row] = None
            if len(delta) > delta_rows:
                delta.popitem(last=False)
                spilled += 1
        last[user] = item
        if spilled >= retired:
            return float(clicks), spilled / clicks
    return float("nan"), spilled / max(clicks, 1)


def run(
    items: int = 100_000,
    seconds: float = 2.0,
    load: float = 0.7,
    starve_s: float = 10.0,
    cpu: int | None = None,
    nice: int = 19,
) -> dict[str, Any]:
    """The figures; pins the calling thread (and the threads it starts) to `cpu`.

    Three builds: at nice 0 and at `nice` under a query loop busy `load` of the
    time, then one at `nice` under a loop that never idles, cut off
    after `starve_s` (it may never finish: that is the point of measuring it)."""
    if cpu is None:
        cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    faiss.omp_set_num_threads(1)
    vectors, queries = model_like(items, 2_000, seed=0)
    progress = [0]

    def count(done: int, total: int) -> None:
        progress[0] = done

    index = FaissIndex(DIM, progress=count)
    try:
        index.upsert([f"i{r}" for r in range(items)], vectors)
        index.rebuild(wait=True)
        idle = query_loop(index, queries, lambda: True, load, min_s=seconds)
        normal = during_build(index, queries, 0, load, progress)
        niced = during_build(index, queries, nice, load, progress)
        starved = during_build(index, queries, nice, 1.0, progress, max_s=starve_s)
        rows = max(1.0, index.rebuild_fraction * items)
        delta_rows = index.delta_rows
    finally:
        index.close()
    clicks, spilled_per_click = clicks_per_build(items, delta_rows, int(rows))
    add_us = add_cost_us(vectors)
    build_cpu = min(normal["build_cpu_s"], niced["build_cpu_s"])
    figures: dict[str, Any] = {
        "rebuild_items": items,
        "rebuild_cpu": cpu,
        "rebuild_load": load,
        "rebuild_build_nice": nice,
        "rebuild_idle": idle,
        "rebuild_nice0": normal,
        "rebuild_niced": niced,
        "rebuild_niced_saturated": starved,
        "rebuild_cpu_s": build_cpu,
        "rebuild_delta_rows": delta_rows,
        "rebuild_rows_per_build": rows,
        "rebuild_clicks_per_build": clicks,
        "rebuild_cpu_us_per_click": build_cpu / clicks * 1e6,
        "rebuild_spill_rows_per_click": spilled_per_click,
        "rebuild_spill_us_per_click": spilled_per_click * add_us,
        "rebuild_add_us_per_row": add_us,
    }
    for label, run_ in (("nice0", normal), ("niced", niced)):
        figures[f"rebuild_query_p99_us_{label}"] = run_["p99_us"]
        figures[f"rebuild_query_max_us_{label}"] = run_["max_us"]
        figures[f"rebuild_qps_share_{label}"] = run_["qps"] / idle["qps"]
    return figures


def report(figures: dict[str, Any]) -> str:
    load = figures["rebuild_load"]
    lines = [
        f"rebuild of {figures['rebuild_items']:,} items on one core (cpu"
        f" {figures['rebuild_cpu']}), search top-{K}; share = queries/s over no build's",
        f"{'':<34}{'p50 us':>8}{'p99 us':>9}{'max us':>9}{'QPS':>8}{'share':>7}"
        f"{'build s':>9}{'CPU s':>7}{'done':>6}",
    ]
    idle_qps = figures["rebuild_idle"]["qps"]
    nice = figures["rebuild_build_nice"]
    for label, key in (
        (f"no build, loop busy {load:.0%}", "rebuild_idle"),
        (f"build nice 0, loop busy {load:.0%}", "rebuild_nice0"),
        (f"build nice {nice}, loop busy {load:.0%}", "rebuild_niced"),
        (f"build nice {nice}, loop busy 100%", "rebuild_niced_saturated"),
    ):
        f = figures[key]
        build = ""
        if "build_wall_s" in f:
            done = "yes" if f["build_done"] else f"{f['build_rows_done']:,.0f}"
            build = f"{f['build_wall_s']:>9.2f}{f['build_cpu_s']:>7.2f}{done:>6}"
        lines.append(
            f"{label:<34}{f['p50_us']:>8.0f}{f['p99_us']:>9.0f}{f['max_us']:>9.0f}"
            f"{f['qps']:>8.0f}{f['qps'] / idle_qps:>7.2f}{build}"
        )
    lines.append(
        f"a delta of {figures['rebuild_delta_rows']:,} rows passes"
        f" {figures['rebuild_spill_rows_per_click']:.2f} rows per click to the graph, at"
        f" {figures['rebuild_add_us_per_row']:,.0f} us each:"
        f" {figures['rebuild_spill_us_per_click']:,.0f} us per click;"
    )
    lines.append(
        f"a build every {figures['rebuild_rows_per_build']:,.0f} retired nodes ="
        f" {figures['rebuild_clicks_per_build']:,.0f} clicks:"
        f" {figures['rebuild_cpu_us_per_click']:,.0f} us of build CPU per click"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=2.0, help="the no-build query run")
    parser.add_argument("--load", type=float, default=0.7, help="query loop busy share")
    parser.add_argument("--starve-s", type=float, default=10.0, help="saturated run cut-off")
    parser.add_argument("--nice", type=int, default=19, help="niced build's niceness")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    figures = run(args.items, args.seconds, args.load, args.starve_s, nice=args.nice)
    print(report(figures))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
