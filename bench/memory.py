"""Bounded memory (issue #6): one worker's peak RSS over a stream of distinct users.

    python -m bench.memory                      # 1M users, 200k items, covisit model
    python -m bench.memory --model torch --users 100000 --catalogue

A real `streamrec worker` process on the embedded broker and Redis (placement as in
bench/e2e.py: services and this script on core 0, the worker on core 1) gets
`--users` users who arrive, click `--clicks-per-user` times within about 2,000
events and never come back (bench/workload.py `arriving_users`), over `--items` items.
The worker runs with STREAMREC_MAX_USERS and STREAMREC_MEMORY_CAP_MB as given; this
script samples the worker's RSS with psutil every 0.2 s and reports the peak against
the cap. events/s is the worker's recommendations counter over the time it took to
emit them all (first to last), from polling /metrics.

The default model is `covisit`: the cheapest model with realistic per-user state (the
same UserRecord of recent items and dedup window) and per-item state (transition
counts), fast enough for 2M clicks in minutes. `--model torch` is the product default
(GRU state in every user record, an embedding, FAISS vector and ledger entry per item)
and runs at a fraction of the rate; with `--catalogue` the worker starts from a
checkpoint that already holds all `--items` items, as a deployed worker would.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.e2e import SERVICES_CORE, Worker, bench_settings, pinned
from bench.workload import arriving_users, write_catalogue
from stream.dev.harness import scrape_metric
from stream.dev.services import start_stack
from stream.kafka.producer import make_producer, replay
from stream.kafka.topics import ensure_topics, worker_topics

SAMPLE_S = 0.2


class PeakRss:
    """Samples a process's resident set size in a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def metric(worker: Worker, sample: str) -> float:
    return scrape_metric(f"{worker.url}/metrics", sample) or 0.0


def run(args: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    events = args.users * args.clicks_per_user
    with tempfile.TemporaryDirectory(prefix="streamrec-memory-") as tmp, pinned(SERVICES_CORE):
        workdir = Path(tmp)
        stack = start_stack(workdir / "stack")
        try:
            checkpoint = Path("")
            if args.catalogue:
                log(f"writing a {args.items}-item torch checkpoint ...")
                checkpoint = write_catalogue(workdir / "catalogue.safetensors", args.items)
            settings = bench_settings(stack, workdir, checkpoint).replace(
                checkpoint=str(checkpoint) if args.catalogue else "",
                model=args.model,
                max_users=args.max_users,
                memory_cap_mb=args.cap_mb,
                log_level="warning",
            )
            Path(settings.data_dir).mkdir(parents=True)
            ensure_topics(settings.bootstrap_servers, worker_topics(settings), settings.partitions)
            log(
                f"starting a {args.model} worker (max_users {args.max_users}, "
                f"memory cap {args.cap_mb} MB) ..."
            )
            worker = Worker(settings, workdir / "worker.log")
            try:
                return measure(worker, args, events, log)
            finally:
                worker.stop()
        finally:
            stack.close()


def measure(worker: Worker, args: argparse.Namespace, events: int, log: Any) -> dict[str, Any]:
    settings = worker.settings
    rss = PeakRss(worker.process.pid)
    start_rss = rss.process.memory_info().rss
    produced = threading.Event()

    def produce() -> None:
        producer = make_producer(settings.bootstrap_servers)
        try:
            for chunk in arriving_users(
                events, users=args.users, items=args.items, seed=args.seed, cover=not args.catalogue
            ):
                replay(
                    chunk,
                    bootstrap_servers=settings.bootstrap_servers,
                    topic=settings.clicks_topic,
                    progress=False,
                    producer=producer,
                )
        finally:
            producer.close()
            produced.set()

    log(f"{events:,} clicks from {args.users:,} distinct users over {args.items:,} items ...")
    threading.Thread(target=produce, daemon=True).start()
    emitted_sample = "streamrec_recommendations_emitted_total"
    first = last = None
    half_rss: int | None = None  # peak RSS when half the recommendations were out
    done = 0.0
    deadline = time.monotonic() + args.timeout_s
    next_report = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = metric(worker, emitted_sample)
        now = time.monotonic()
        if done and first is None:
            first = now
        if done >= events / 2 and half_rss is None:
            half_rss = rss.peak
        if done >= events:
            last = now
            break
        if worker.process.poll() is not None:
            raise RuntimeError(f"worker exited; see {worker.log_path}")
        if now >= next_report:
            log(f"  {done:,.0f} recommendations, peak RSS {rss.peak / 2**20:,.0f} MB")
            next_report = now + 30
        time.sleep(0.5)
    time.sleep(6)  # one more state report (every 5 s) for the final gauges
    rss.stop()
    evicted = {
        reason: metric(worker, f'streamrec_users_evicted_total{{reason="{reason}"}}')
        for reason in ("cap", "idle", "memory")
    }
    seconds = (last - first) if first is not None and last is not None else float("nan")
    return {
        "model": args.model,
        "users": args.users,
        "items": args.items,
        "events": events,
        "recommendations": int(done),
        "max_users": args.max_users,
        "memory_cap_mb": args.cap_mb,
        "user_cap_final": int(metric(worker, "streamrec_user_cap")),
        "users_in_state_final": int(metric(worker, "streamrec_users_in_state")),
        "users_evicted": {k: int(v) for k, v in evicted.items()},
        "index_items": int(metric(worker, "streamrec_index_items")),
        "start_rss_mb": round(start_rss / 2**20, 1),
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        # Bounded means flat: how much the peak grew over the second half of the stream.
        "peak_rss_mb_at_half": None if half_rss is None else round(half_rss / 2**20, 1),
        "second_half_growth_mb": None
        if half_rss is None
        else round((rss.peak - half_rss) / 2**20, 1),
        "rss_samples": rss.samples,
        "under_cap": bool(args.cap_mb == 0 or rss.peak < args.cap_mb * 2**20),
        "events_per_s": round(events / seconds, 1) if seconds == seconds else None,
        "seconds": round(seconds, 1),
        "complete": last is not None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--clicks-per-user", type=int, default=2)
    parser.add_argument("--model", default="covisit", choices=("covisit", "popularity", "torch"))
    parser.add_argument(
        "--catalogue",
        action="store_true",
        help="start from a torch checkpoint holding every item (torch only)",
    )
    parser.add_argument("--max-users", type=int, default=100_000)
    parser.add_argument("--cap-mb", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=1800)
    args = parser.parse_args(argv)
    if args.users < 1 or args.items < 1 or args.clicks_per_user < 1:
        parser.error("--users, --items and --clicks-per-user must be at least 1")
    if args.catalogue and args.model != "torch":
        parser.error("--catalogue is a torch checkpoint: use it with --model torch")
    result = run(args)
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
