"""`make bench`: every benchmark figure in one run, a table, and a JSON report.

    python -m bench.run [--quick] [--out DIR]

Starts its own embedded broker and Redis, writes the catalogues it needs to a
temporary directory, and prints the JSON report's path as its last line. `--quick`
runs the 100k-item figures only, with fewer events and shorter latency runs (a smoke
run that still produces every figure, not the report).
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
    # The issue asks p99 <= 20 ms at 70% of the 10,000 events/s goal.
    "max_rate_p99_20ms": (">=", 7_000),
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


def rebuild_figures(quick: bool) -> dict[str, Any]:
    from bench import rebuild

    items = 50_000 if quick else 100_000
    with pinned(WORKER_CORE):
        figures = rebuild.run(items, seconds=2.0, starve_s=3.0 if quick else 10.0, cpu=WORKER_CORE)
    say(rebuild.report(figures))
    return figures


def run(quick: bool, out_dir: Path) -> Path:
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    sizes = {"100k": 100_000} if quick else {"100k": 100_000, "1m": 1_000_000}
    # Each end-to-end run gets about `seconds` of clicks at the in-process rate, so a
    # slow configuration still finishes and a fast one is measured long enough.
    seconds = 5.0 if quick else 20.0
    latency_s, ladder_s = (5.0, 3.0) if quick else (15.0, 10.0)
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
            if label == "100k":
                report.update(variant_costs(catalogues[label], stream, ceiling))
                report.update(content_cost(catalogues[label], stream, ceiling))

        report.update(ann_figures(quick))
        report.update(rebuild_figures(quick))

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
                    latency_s=latency_s if label == "100k" else 0.0,
                    ladder_s=ladder_s if label == "100k" else 0.0,
                    with_freshness=label == "100k",
                    log=say,
                )
                report[f"e2e_{label}"] = figures
                report[f"e2e_events_per_s_{label}"] = figures["throughput"]["events_per_s"]
                if "latency" in figures:
                    for key in ("latency_ms_p50", "latency_ms_p99", "latency_ms_p999"):
                        report[key] = figures["latency"][key]
                    report["latency_rate_events_per_s"] = figures["latency"]["rate"]
                    report["latency_backlog_at_end"] = figures["latency"]["backlog_at_end"]
                    report["latency_missing"] = figures["latency"]["missing"]
                if "ladder" in figures:
                    for key in ("max_rate_p99_20ms", "max_rate_p99_50ms"):
                        report[key] = figures["ladder"][key]
                if "scaling" in figures:
                    report["e2e_events_per_s_100k_2_workers"] = figures["scaling"][
                        "two_workers_events_per_s"
                    ]
                    report["scaling_2_over_1_100k"] = figures["scaling"]["ratio_2_over_1"]
                    report["scaling_placement"] = figures["scaling"]["placement"]
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


def variant_costs(
    catalogue: Path, stream: list[dict[str, Any]], alone: dict[str, float]
) -> dict[str, float]:
    """What a second A/B variant adds to the in-process cost of a click (every variant
    learns every click; each user's serves): a second torch checkpoint, and covisit."""
    costs = {}
    for second in ("torch", "covisit"):
        say(f"[100000 items] in-process ceiling with a second variant, {second} ...")
        with pinned(WORKER_CORE):
            both = ceiling_events_per_s(catalogue, stream, second_variant=second)
        costs[f"variant_{second}_us_per_click"] = 1e6 * (
            1 / both["events_per_s"] - 1 / alone["events_per_s"]
        )
    return costs


def content_cost(
    catalogue: Path, stream: list[dict[str, Any]], alone: dict[str, float]
) -> dict[str, float]:
    """What item content (issue 15) adds to the in-process cost of a click: the torch
    model given a catalogue of every item it knows."""
    say("[100000 items] in-process ceiling with item content ...")
    with pinned(WORKER_CORE):
        given = ceiling_events_per_s(catalogue, stream, content=True)
    return {
        "content_events_per_s_100k": given["events_per_s"],
        "content_us_per_click": 1e6 * (1 / given["events_per_s"] - 1 / alone["events_per_s"]),
    }


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
        ("latency_backlog_at_end", "latency run: clicks not yet answered at its end"),
        ("latency_missing", "latency run: clicks never answered (timeout)"),
        ("max_rate_p99_20ms", "highest ladder rate with p99 <= 20 ms, events/s"),
        ("max_rate_p99_50ms", "highest ladder rate with p99 <= 50 ms, events/s"),
        ("e2e_events_per_s_100k_2_workers", "end-to-end events/s, 100k, 2 workers"),
        ("scaling_2_over_1_100k", "2 workers / 1 worker (both on core 1)"),
        ("variant_torch_us_per_click", "2nd variant torch: in-process us per click added"),
        ("variant_covisit_us_per_click", "2nd variant covisit: in-process us per click added"),
        ("content_us_per_click", "item content (catalogue): in-process us per click added"),
        ("ann_qps_100k", "ANN queries/s, 100k items, one core"),
        ("ann_recall10_100k", "ANN recall@10, 100k items"),
        ("ann_qps_1m", "ANN queries/s, 1M items, one core"),
        ("ann_recall10_1m", "ANN recall@10, 1M items"),
        ("rebuild_query_p99_us_nice0", "search p99 us during a rebuild, nice 0"),
        ("rebuild_query_p99_us_niced", "search p99 us during a rebuild, nice 19"),
        ("rebuild_spill_us_per_click", "graph insertions CPU us per click, amortised"),
        ("rebuild_cpu_us_per_click", "index rebuild CPU us per click, amortised"),
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
