"""Click-to-recommendation latency at fixed rates, and where the worker's time went.

    python -m bench.latency --rates 64,200,500 [--seconds 10] [--items 100000]
        [--model torch|popularity]

One worker (torch, a fresh `--items`-item checkpoint, default settings) on the embedded
broker and Redis, placed as `make bench` places it (bench/e2e.py: the worker on core 1,
the broker, Redis and this script on core 0). After a warm-up, for each rate in turn:
clicks paced at that rate for `--seconds`, latency percentiles and backlog measured as
bench/e2e.py measures them (Kafka record timestamps), and from the worker's /metrics
over the same run its mean batch and the time per click of each stage
(`streamrec_stage_seconds`: wall time, so `produce` includes the wait for the broker's
acknowledgements and whatever the event loop ran meanwhile). It shows how batching
and per-batch costs behave at the rates a worker sustains, which the throughput runs
(always full batches) do not. `--model popularity` runs a worker whose model costs a
few microseconds per click, so its latency is what the broker, Faust and the worker's
own path take: the floor the torch model's latency sits on. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from bench.e2e import SERVICES_CORE, Worker, bench_settings, latency, pinned, prepare, warm_up
from bench.workload import click_stream, write_catalogue
from stream.dev.services import start_stack

_SERIES = re.compile(
    r"streamrec_(stage_seconds|batch_clicks)_(sum|count)(?:\{stage=\"(\w+)\"\})? (\S+)"
)


def worker_totals(url: str) -> dict[tuple[str, str, str], float]:
    """The worker's stage and batch histograms' sums and counts, by (name, stage, kind)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    totals = {}
    for line in text.splitlines():
        match = _SERIES.match(line)
        if match:
            name, kind, stage, value = match.groups()
            totals[(name, stage or "", kind)] = float(value)
    return totals


def worker_figures(
    before: dict[tuple[str, str, str], float], after: dict[tuple[str, str, str], float]
) -> dict[str, float]:
    """Mean batch and microseconds per click of each stage between two scrapes."""
    change = {key: value - before.get(key, 0.0) for key, value in after.items()}
    batches = change.get(("batch_clicks", "", "count"), 0.0)
    figures = {"mean_batch": change.get(("batch_clicks", "", "sum"), 0.0) / max(1.0, batches)}
    for (name, stage, kind), total in sorted(change.items()):
        if name == "stage_seconds" and kind == "sum":
            count = change.get((name, stage, "count"), 0.0)
            figures[f"{stage}_us_per_click"] = 1e6 * total / max(1.0, count)
    return figures


def run(
    rates: list[float],
    seconds: float,
    items: int,
    model: str = "torch",
    pipeline_batches: int = 0,
) -> list[dict[str, Any]]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = []
    with tempfile.TemporaryDirectory(prefix="streamrec-latency-") as tmp:
        workdir = Path(tmp)
        catalogue = write_catalogue(workdir / "catalogue.safetensors", items)
        with pinned(SERVICES_CORE):
            stack = start_stack(workdir / "services")
        try:
            settings = bench_settings(stack, workdir, catalogue)
            if model != "torch":
                settings = dataclasses.replace(settings, model=model, checkpoint="")
            if pipeline_batches:
                settings = dataclasses.replace(settings, pipeline_batches=pipeline_batches)
            prepare(settings)
            worker = Worker(settings, workdir / "worker.log")
            try:
                worker.wait_rebuilt()
                warm_up(settings, items)
                for i, rate in enumerate(rates):
                    count = max(100, int(rate * seconds))
                    paced = click_stream(
                        count, items=items, users=max(100, count // 10), seed=10 + i
                    )
                    before = worker_totals(worker.url)
                    measured = latency(worker, paced, rate)
                    figures = {
                        "model": model,
                        **measured,
                        **worker_figures(before, worker_totals(worker.url)),
                    }
                    results.append(figures)
                    print(_line(figures), file=sys.stderr, flush=True)
            finally:
                worker.stop()
        finally:
            stack.close()
    return results


def _line(figures: dict[str, Any]) -> str:
    stages = " ".join(
        f"{key.removesuffix('_us_per_click')} {value:,.0f}"
        for key, value in figures.items()
        if key.endswith("_us_per_click")
    )
    return (
        f"{figures['rate']:,.0f} clicks/s: p50 {figures['latency_ms_p50']:,.0f} / p99 "
        f"{figures['latency_ms_p99']:,.0f} / p99.9 {figures['latency_ms_p999']:,.0f} ms, "
        f"backlog at end {figures['backlog_at_end']}, missing {figures['missing']}; "
        f"mean batch {figures['mean_batch']:.1f}; us per click: {stages}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates", default="64,200,500", help="comma-separated clicks/s (default 64,200,500)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each rate's run")
    parser.add_argument("--items", type=int, default=100_000, help="catalogue size")
    parser.add_argument(
        "--model",
        default="torch",
        choices=("torch", "popularity"),
        help="the worker's model (popularity: the transport's own latency)",
    )
    parser.add_argument(
        "--pipeline-batches",
        type=int,
        default=0,
        help="the worker's STREAMREC_PIPELINE_BATCHES (default: the setting's default; "
        "1 applies one batch at a time)",
    )
    args = parser.parse_args(argv)
    try:
        rates = [float(rate) for rate in args.rates.split(",")]
    except ValueError:
        parser.error(f"--rates must be numbers separated by commas, not {args.rates!r}")
    if args.pipeline_batches < 0:
        parser.error("--pipeline-batches must be at least 1 (0: the default)")
    if not rates or min(rates) <= 0 or args.seconds <= 0 or args.items < 1:
        parser.error("--rates and --seconds must be positive and --items at least 1")
    import torch

    torch.set_num_threads(1)
    print(json.dumps(run(rates, args.seconds, args.items, args.model, args.pipeline_batches)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
