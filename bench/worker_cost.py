"""The worker's own CPU cost per click, on the embedded broker and Redis.

One worker process (pinned to the worker core, as bench/e2e.py places it) gets N clicks
produced as fast as the producer goes while it is idle. Its CPU time (user + system of
the worker pid, from the kernel) is sampled just before the first click is produced and
again once the last recommendation has been read back; the difference divided by the
clicks is the worker's CPU microseconds per click. With the `popularity` model (the
default) the model costs a few microseconds, so the figure is the pipeline's own:
decoding, dedup, records, metrics, producing and committing.

Also printed: end-to-end events/s (recommendation record timestamps, first to last) and
the worker's idle CPU rate, measured over a few seconds before the load (its fetch
loops and timers), which the per-click figure includes for the seconds the run lasts;
`net_of_idle_us_per_click` takes it out. On a shared machine a slower run costs more
per click (longer wall time, smaller batches): compare runs made back to back.

    python -m bench.worker_cost --events 30000 [--model popularity|covisit|torch]
        [--items 100000] [--profile profile.txt]

`--in-process` measures instead the worker's own batch path alone, in this process:
`BatchApplier.apply` over the same model, a dict for the user table and sinks that
resolve at once (no Kafka client, no Faust), in batches of `--batch` clicks; CPU time
per click. That is the part of the per-click cost this repository's worker code owns.

`--profile` attaches a sampling profiler (py-spy, when installed) to the worker for the
run and writes its raw collapsed stacks there. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.e2e import Worker, bench_settings, prepare, read_recommendations, warm_up
from bench.workload import click_stream, write_catalogue
from model.registry import build_recommender
from stream.dev.harness import scrape_metric
from stream.dev.services import start_stack
from stream.events import Click
from stream.kafka.producer import replay
from stream.metrics import WorkerMetrics
from stream.settings import MODEL_STEPS, Settings
from stream.worker.applier import BatchApplier
from stream.worker.pipeline import Accepted, ClickProcessor
from stream.worker.retention import UserRetention
from stream.worker.users import UserTable
from stream.worker.views import RecentRecommendations

IDLE_SAMPLE_S = 3.0


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def start_profiler(pid: int, path: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy not found: no profile", file=sys.stderr)
        return None
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250", "-o", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_logged(worker: Worker, text: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in worker.log_path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker never logged {text!r}; see {worker.log_path}")
        time.sleep(0.2)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    stack = start_stack(workdir / "stack")
    try:
        checkpoint = Path("")
        if args.model == "torch":
            print(f"writing a {args.items}-item catalogue ...", file=sys.stderr)
            checkpoint = write_catalogue(workdir / "catalogue.pt", args.items)
        settings = bench_settings(stack, workdir, checkpoint)
        settings = dataclasses.replace(
            settings,
            model=args.model,
            checkpoint=str(checkpoint) if args.model == "torch" else "",
            model_step=args.model_step,
            **({"batch_wait_ms": args.batch_wait_ms} if args.batch_wait_ms is not None else {}),
        )
        prepare(settings)
        print(f"starting a {args.model} worker ...", file=sys.stderr)
        worker = Worker(settings, workdir / "worker.log")
        try:
            if args.model == "torch":
                worker.wait_rebuilt()
            wait_logged(worker, "item vectors caught up")
            warm_up(settings, args.items, clicks=1000, users=300)
            return measure(args, worker)
        finally:
            worker.stop()
    finally:
        stack.close()


def measure(args: argparse.Namespace, worker: Worker) -> dict[str, Any]:
    settings = worker.settings
    process = psutil.Process(worker.process.pid)
    stream = click_stream(args.events, items=args.items, users=max(100, args.events // 10), seed=1)
    time.sleep(1.0)  # the warm-up's commits and flushes settle
    idle_before = cpu_seconds(process)
    time.sleep(IDLE_SAMPLE_S)
    idle_rate = (cpu_seconds(process) - idle_before) / IDLE_SAMPLE_S
    profiler = start_profiler(process.pid, Path(args.profile)) if args.profile else None
    print(f"producing {args.events} clicks ...", file=sys.stderr)
    started_wall = time.monotonic()
    before = cpu_seconds(process)
    replay(
        stream,
        bootstrap_servers=settings.bootstrap_servers,
        topic=settings.clicks_topic,
        progress=False,
    )
    stamps = read_recommendations(settings, {e["event_id"] for e in stream}, timeout_s=900)
    after = cpu_seconds(process)
    wall = time.monotonic() - started_wall
    if profiler is not None:
        profiler.send_signal(2)  # SIGINT: py-spy writes the profile and exits
        profiler.wait(30)
    first, last = min(stamps.values()), max(stamps.values())
    clicks = len(stamps)
    url = f"{worker.url}/metrics"
    batches = scrape_metric(url, "streamrec_batch_clicks_count")
    batched = scrape_metric(url, "streamrec_batch_clicks_sum")
    # The produce stage is observed per click as the batch's send-and-acknowledge wait
    # over its clicks, so its sum over batches is the total wait.
    produce_s = scrape_metric(url, 'streamrec_stage_seconds_sum{stage="produce"}')
    return {
        "model": args.model,
        "model_step": settings.model_step,
        "batch_wait_ms": settings.batch_wait_ms,
        "items": args.items,
        "events": args.events,
        "recommendations": clicks,
        "worker_cpu_s": round(after - before, 3),
        "worker_cpu_us_per_click": round((after - before) / max(1, clicks) * 1e6, 1),
        # The idle worker's own rate (fetch loops, timers) taken out: what the clicks
        # cost beyond it. Both figures fall as throughput rises.
        "net_of_idle_us_per_click": round(
            max(0.0, after - before - idle_rate * wall) / max(1, clicks) * 1e6, 1
        ),
        "idle_cpu_share": round(idle_rate, 4),
        "wall_s": round(wall, 2),
        "events_per_s": round((clicks - 1) / max(1e-3, (last - first) / 1000), 1),
        # Over the worker's life, warm-up included; absent from workers without it.
        "mean_batch_clicks": round(batched / batches, 1) if batches and batched else None,
        # The mean wait per batch for the broker to acknowledge its sends (the worker
        # applies nothing meanwhile).
        "produce_wait_ms_per_batch": (
            round(produce_s / batches * 1000, 1) if batches and produce_s is not None else None
        ),
    }


def in_process(args: argparse.Namespace) -> dict[str, Any]:
    metrics = WorkerMetrics()
    model = build_recommender(args.model)
    processor = ClickProcessor(
        model,
        None,
        metrics,
        top_k=20,
        exclude="seen",
        dedup_window=128,
        batched=args.model_step == "batch",
    )
    users = UserTable(
        {},
        UserRetention(safe_after_s=0),
        metrics,
        partitions=4,
        owned_partitions=lambda: range(4),
    )
    loop = asyncio.new_event_loop()

    async def send_recommendations(recommendations: list[tuple[bytes, bytes]]) -> list[Any]:
        done = loop.create_future()
        done.set_result(None)
        return [done]

    applier = BatchApplier(
        processor,
        users,
        send_deltas=list,
        send_recommendations=send_recommendations,
        metrics=metrics,
        index=[],
        recent=RecentRecommendations(),
    )
    events = click_stream(args.events, items=args.items, users=max(100, args.events // 10), seed=1)
    now = time.time()
    accepted = [
        Accepted(
            Click(e["user_id"], e["item_id"], e["timestamp"], event_id=e["event_id"]),
            e["user_id"].encode(),
            e["event_id"],
            now,
            "c0",
            offset,
        )
        for offset, e in enumerate(events)
    ]

    async def run_all() -> None:
        for start in range(0, len(accepted), args.batch):
            await applier.apply(accepted[start : start + args.batch])

    started = time.process_time()
    loop.run_until_complete(run_all())
    seconds = time.process_time() - started
    loop.close()
    return {
        "model": args.model,
        "model_step": args.model_step,
        "in_process": True,
        "batch": args.batch,
        "events": len(accepted),
        "cpu_us_per_click": round(seconds / len(accepted) * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--model", default="popularity", choices=("popularity", "covisit", "torch"))
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument(
        "--batch-wait-ms", type=int, default=None, help="the worker's STREAMREC_BATCH_WAIT_MS"
    )
    parser.add_argument(
        "--model-step",
        default=Settings().model_step,
        choices=MODEL_STEPS,
        help="STREAMREC_MODEL_STEP (default: the worker's)",
    )
    parser.add_argument("--profile", default="", help="write the worker's profile here")
    parser.add_argument("--in-process", action="store_true", help="the batch path alone")
    parser.add_argument("--batch", type=int, default=32, help="clicks per batch (--in-process)")
    args = parser.parse_args(argv)
    if args.in_process:
        print(orjson.dumps(in_process(args)).decode())
        return 0
    with tempfile.TemporaryDirectory(prefix="worker-cost-") as tmp:
        result = run(args, Path(tmp))
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
