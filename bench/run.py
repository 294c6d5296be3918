"""`make bench`: every benchmark figure in one run, a table, and a JSON report.

    python -m bench.run [--quick] [--out DIR]

Starts its own embedded broker and Redis, writes the catalogues it needs to a
temporary directory, and prints the JSON report's path as its last line. `--quick`
runs the 100k-item figures only, with fewer events (a smoke run, not the report).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.ceiling import ceiling_events_per_s
from bench.e2e import SERVICES_CORE, WORKER_CORE, end_to_end, pinned
from bench.workload import click_stream, write_catalogue
from stream.dev.services import start_stack

GOALS = {
    "e2e_events_per_s_100k": (">=", 10_000),
    "e2e_events_per_s_1m": (">=", 3_000),
    "latency_ms_p99": ("<=", 20),
    "ann_qps_100k": (">=", 15_000),
    "ann_recall10_100k": (">=", 0.95),
    "freshness_ms_p99": ("<=", 1000),
    "e2e_over_ceiling_100k": (">=", 0.6),
}


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") if os.path.exists("/proc/cpuinfo") else open(os.devnull) as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import faiss

    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gb": round(memory_gb, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
    }


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ann_figures(quick: bool) -> dict[str, Any]:
    try:
        from bench import ann
    except ImportError:
        say("bench/ann.py is missing: no ANN figures")
        return {}
    with pinned(WORKER_CORE):
        figures = ann.run(quick=quick, cpu=WORKER_CORE)
    say(ann.report(figures))
    return figures  # type: ignore[no-any-return]


def run(quick: bool, out_dir: Path) -> Path:
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    sizes = {"100k": 100_000} if quick else {"100k": 100_000, "1m": 1_000_000}
    # Each end-to-end run gets about `seconds` of clicks at the in-process rate, so a
    # slow configuration still finishes and a fast one is measured long enough.
    seconds = 5.0 if quick else 20.0
    sample = 1_000 if quick else 3_000
    report: dict[str, Any] = {
        "machine": machine(),
        "quick": quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="streamrec-bench-") as tmp:
        workdir = Path(tmp)
        catalogues = {}
        for label, items in sizes.items():
            say(f"writing a {items}-item catalogue ...")
            catalogues[label] = write_catalogue(workdir / f"catalogue-{label}.safetensors", items)

        events = {}
        for label, items in sizes.items():
            say(f"[{items} items] in-process ceiling ...")
            stream = click_stream(sample, items=items, users=max(100, sample // 10), seed=1)
            with pinned(WORKER_CORE):
                ceiling = ceiling_events_per_s(catalogues[label], stream)
            report[f"ceiling_events_per_s_{label}"] = ceiling["events_per_s"]
            events[label] = int(min(50_000, max(1_000, seconds * ceiling["events_per_s"])))

        report.update(ann_figures(quick))

        with pinned(SERVICES_CORE):
            stack = start_stack(workdir / "services")
        try:
            for label, items in sizes.items():
                figures = end_to_end(
                    stack,
                    workdir,
                    catalogues[label],
                    items,
                    events=events[label],
                    latency_s=15.0 if label == "100k" else 0.0,
                    with_freshness=label == "100k",
                    log=say,
                )
                report[f"e2e_{label}"] = figures
                report[f"e2e_events_per_s_{label}"] = figures["throughput"]["events_per_s"]
                if "latency" in figures:
                    for key in ("latency_ms_p50", "latency_ms_p99", "latency_ms_p999"):
                        report[key] = figures["latency"][key]
                    report["latency_rate_events_per_s"] = figures["latency"]["rate"]
                if "freshness" in figures:
                    for key in ("freshness_ms_p50", "freshness_ms_p99"):
                        report[key] = figures["freshness"][key]
                    report["freshness_timeouts"] = figures["freshness"]["timeouts"]
        finally:
            stack.close()
    for key in ("e2e_events_per_s_1m", "ceiling_events_per_s_1m"):
        report.setdefault(key, None)
    report["e2e_over_ceiling_100k"] = (
        report["e2e_events_per_s_100k"] / report["ceiling_events_per_s_100k"]
    )
    print_table(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(path.resolve())
    return path


def print_table(report: dict[str, Any]) -> None:
    rows = [
        ("e2e_events_per_s_100k", "end-to-end events/s, 100k items"),
        ("e2e_events_per_s_1m", "end-to-end events/s, 1M items"),
        ("ceiling_events_per_s_100k", "in-process ceiling events/s, 100k items"),
        ("ceiling_events_per_s_1m", "in-process ceiling events/s, 1M items"),
        ("e2e_over_ceiling_100k", "end-to-end / ceiling, 100k"),
        ("latency_rate_events_per_s", "latency run rate (70% of max), events/s"),
        ("latency_ms_p50", "click-to-recommendation p50 ms"),
        ("latency_ms_p99", "click-to-recommendation p99 ms"),
        ("latency_ms_p999", "click-to-recommendation p99.9 ms"),
        ("ann_qps_100k", "ANN queries/s, 100k items, one core"),
        ("ann_recall10_100k", "ANN recall@10, 100k items"),
        ("ann_qps_1m", "ANN queries/s, 1M items, one core"),
        ("ann_recall10_1m", "ANN recall@10, 1M items"),
        ("freshness_ms_p50", "freshness p50 ms (both workers + Redis)"),
        ("freshness_ms_p99", "freshness p99 ms (both workers + Redis)"),
    ]
    print(f"{'figure':<46} {'measured':>12}  goal")
    for key, label in rows:
        value = report.get(key)
        shown = "-" if value is None else (f"{value:.3f}" if value < 10 else f"{value:,.0f}")
        goal = GOALS.get(key)
        verdict = ""
        if goal and value is not None:
            op, target = goal
            met = value >= target if op == ">=" else value <= target
            verdict = f"{op} {target:g}  {'met' if met else 'MISSED'}"
        print(f"{label:<46} {shown:>12}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="100k items only, fewer events: a smoke run"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench/results"),
        help="where the JSON report goes (default bench/results)",
    )
    args = parser.parse_args()
    try:
        run(args.quick, args.out)
    except KeyboardInterrupt:
        say("interrupted")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
