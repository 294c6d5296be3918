"""`make chaos`: kill workers with SIGKILL mid-stream and check nothing was lost or
applied twice (issue 6's fault harness).

    python -m bench.chaos [--events 100000] [--workers 3] [--kills 10] [--seed 0]
                          [--model covisit] [--duration 240]

Starts an embedded broker and Redis, N workers in one consumer group, and a producer
that sends `--events` clicks (unique event ids, keyed by user id, 5k users x 2k items)
spread over `--duration` seconds. Meanwhile it SIGKILLs a random worker at a random
moment of each of `--kills` equal slices of that time and starts a fresh process in its
place (same settings and data dir: a restarted pod). When the stream has drained it
checks the output topics against the input (stream/dev/audit.py): lost clicks (no
recommendation), clicks applied twice or not at all in the final user state, repeated
recommendations; then replays the same input into a fresh single worker and compares
each user's final state. Prints a table and, as its last line, one JSON object. Exit
code 1 if anything was lost, applied twice or differs from the replay.

Why covisit by default: its user context holds no learned state (recent items, click
count, last time), so the whole context must equal the replay's; the torch GRU state
depends on the order in which clicks of *different* users reach the shared item
vectors, which differs with the worker count, so with `--model torch` only the
model-independent fields are compared (stream/dev/audit.py, `comparable_fields`).
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from stream.dev import audit
from stream.dev.cluster import (
    Cluster,
    PeakRss,
    Recommended,
    fresh_topics,
    make_events,
    wait_drained,
)
from stream.dev.services import ServiceError, start_stack
from stream.kafka.producer import replay


def say(text: str) -> None:
    print(f"chaos: {text}", file=sys.stderr, flush=True)


def kill_schedule(rng: random.Random, kills: int, duration_s: float) -> list[float]:
    """One moment in each of `kills` equal slices of the run, away from its edges, so
    kills are random but never bunched (each needs a session timeout to recover).
    None for `--kills 0` (a baseline run: what differs from the replay without faults)."""
    if kills <= 0:
        return []
    slot = duration_s / kills
    return [(n + rng.uniform(0.15, 0.85)) * slot for n in range(kills)]


def chaos_run(
    stack: Any,
    workdir: Path,
    events: Sequence[dict[str, Any]],
    *,
    workers: int,
    kills: int,
    duration_s: float,
    model: str,
    rng: random.Random,
    drain_quiet_s: float,
    log_level: str = "warning",
) -> dict[str, Any]:
    """The run under faults; returns its figures and final state."""
    settings = fresh_topics(stack, workdir / "chaos", model, log_level)
    cluster = Cluster(settings, workers, workdir / "logs")
    total = len(events)
    try:
        say(f"starting {workers} workers (model {model}) ...")
        cluster.start()
        schedule = kill_schedule(rng, kills, duration_s)
        rate = total / duration_s
        say(
            f"producing {total:,} clicks at {rate:,.0f}/s over {duration_s:.0f} s; "
            f"{kills} kills at {', '.join(f'{t:.0f}' for t in schedule)} s"
        )
        producer = threading.Thread(
            target=replay,
            args=(events,),
            daemon=True,
            name="producer",
            kwargs={
                "bootstrap_servers": settings.bootstrap_servers,
                "topic": settings.clicks_topic,
                "rate": rate,
                "progress": False,
            },
        )
        started = time.monotonic()
        crashed: list[int] = []
        with PeakRss(cluster.pids) as rss, Recommended(settings) as recommended:
            producer.start()

            def watch() -> None:
                for slot in cluster.restart_crashed():
                    crashed.append(slot)
                    say(f"worker {slot} exited on its own (see {cluster.log_dir}); restarted")

            def progress(done: int) -> None:
                watch()
                say(
                    f"{time.monotonic() - started:6.0f} s  recommended {done:,}/{total:,}  "
                    f"kills {cluster.kills}  workers alive {len(cluster.pids())}"
                )

            next_report = 0.0
            for moment in schedule:
                while time.monotonic() - started < moment:
                    watch()
                    if time.monotonic() >= next_report:
                        progress(len(recommended.ids))
                        next_report = time.monotonic() + 5
                    time.sleep(0.1)
                slot = rng.randrange(workers)
                cluster.kill(slot)
                say(
                    f"{time.monotonic() - started:6.0f} s  SIGKILL worker {slot} "
                    f"({cluster.kills}/{kills})"
                )
                time.sleep(rng.uniform(0.0, 3.0))  # a restarted pod takes a moment
                cluster.spawn(slot)
            producer.join()
            say("all clicks produced; waiting for the stream to drain ...")
            drained = wait_drained(lambda: len(recommended.ids), total, drain_quiet_s, progress)
            drain_s = time.monotonic() - started
            crashed += cluster.crashed()
        time.sleep(3)  # user records follow their recommendations by a flush
        recommendations = audit.recommendation_counts(settings)
        users = audit.final_user_records(settings)
        items = audit.final_item_events(settings)
    finally:
        cluster.close()
    return {
        "settings": settings,
        "drained": drained,
        "seconds": drain_s,
        "kills": cluster.kills,
        "crashed": crashed,
        "peak_rss_mb": rss.peak_bytes / 2**20,
        "recommendations": recommendations,
        "users": users,
        "items": items,
    }


def replay_run(
    stack: Any, workdir: Path, events: Sequence[dict[str, Any]], *, model: str, drain_quiet_s: float
) -> dict[str, Any]:
    """The same input into one fresh worker on fresh topics; its final state."""
    settings = fresh_topics(stack, workdir / "replay", model)
    cluster = Cluster(settings, 1, workdir / "replay-logs")
    try:
        say("replaying the same clicks into a fresh single worker ...")
        cluster.start()
        started = time.monotonic()
        with Recommended(settings) as recommended:
            replay(
                events,
                bootstrap_servers=settings.bootstrap_servers,
                topic=settings.clicks_topic,
                progress=False,
            )
            wait_drained(
                lambda: len(recommended.ids),
                len(events),
                drain_quiet_s,
                lambda done: say(f"replay: recommended {done:,}/{len(events):,}"),
            )
        seconds = time.monotonic() - started
        time.sleep(3)
        users = audit.final_user_records(settings)
        items = audit.final_item_events(settings)
    finally:
        cluster.close()
    return {"users": users, "items": items, "seconds": seconds}


def report(
    args: argparse.Namespace,
    events: Sequence[dict[str, Any]],
    run: dict[str, Any],
    again: dict[str, Any] | None,
    wall_s: float,
) -> dict[str, Any]:
    verdict = audit.check(events, run["recommendations"], run["users"])
    fields = audit.comparable_fields(args.model)
    summary: dict[str, Any] = {
        "events": verdict.events,
        "workers": args.workers,
        "kills": run["kills"],
        "lost": verdict.lost,
        "double_applied": verdict.double_applied,
        "under_applied": verdict.under_applied,
        "duplicate_recommendations": verdict.duplicate_recommendations,
        "users": verdict.users,
        "state_matches_replay": None,
        "state_mismatched_users": None,
        "compared_fields": list(fields),
        "item_deltas_double_applied": None,
        "peak_rss_mb": round(run["peak_rss_mb"], 1),
        "model": args.model,
        "seed": args.seed,
        "drain_seconds": round(run["seconds"], 1),
        "unexpected_worker_exits": len(run["crashed"]),
        "wall_seconds": round(wall_s, 1),
        "lost_ids": list(verdict.lost_ids),
    }
    if again is not None:
        mismatched = audit.state_mismatches(run["users"], again["users"], fields)
        summary["state_matches_replay"] = not mismatched
        summary["state_mismatched_users"] = len(mismatched)
        for line in audit.state_differences(run["users"], again["users"], fields, mismatched[:3]):
            say(f"differs from the replay: {line}")
        if run["items"] or again["items"]:
            summary["item_deltas_double_applied"] = audit.item_event_excess(
                run["items"], again["items"]
            )
    rows = [
        ("events", "clicks sent (distinct event ids)"),
        ("workers", "workers in the group"),
        ("kills", "SIGKILLs (each followed by a restart)"),
        ("lost", "lost: accepted clicks with no recommendation (must be 0)"),
        ("double_applied", "applied twice in the user state (must be 0)"),
        ("under_applied", "recommended but missing from the user state (must be 0)"),
        ("duplicate_recommendations", "repeated recommendation events (bounded, reported)"),
        ("state_matches_replay", "user state equals a single-worker replay"),
        ("state_mismatched_users", "users whose state differs from the replay"),
        # Reported, not judged: it depends on how workers interleave, since it is above 0
        # without any fault (19 with 5,000 clicks, 3 workers, --kills 0, torch); likely an
        # item first seen by several workers before its owner's broadcast arrives gets a
        # creation delta from each, where a lone worker makes one.
        ("item_deltas_double_applied", "item deltas beyond the replay's (torch; reported)"),
        ("peak_rss_mb", "peak RSS of any worker, MB"),
        ("drain_seconds", "first click to drained, s"),
        ("unexpected_worker_exits", "workers that died without being killed"),
        ("wall_seconds", "wall time of the whole harness, s"),
    ]
    print(f"compared fields per user: {', '.join(fields)}")
    for key, label in rows:
        value = summary[key]
        shown = (
            "n/a"
            if value is None
            else (
                f"{value:,}"
                if isinstance(value, int) and not isinstance(value, bool)
                else str(value)
            )
        )
        print(f"{label:<58} {shown:>10}")
    return summary


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description=__doc__.split("\n\n")[0],
        epilog="Checks: lost (no recommendation for a sent click), double_applied (a "
        "user's final `applied` count over the clicks sent for that user), "
        "duplicate_recommendations (reported), state_matches_replay (final user state "
        "equal to one fresh worker fed the same clicks), peak_rss_mb (any worker, "
        "sampled every 0.5 s). Exit code 1 if lost, double_applied or under_applied is "
        "not 0 or the state differs.",
    )
    parser.add_argument(
        "--events", type=int, default=100_000, help="clicks to send (default 100000)"
    )
    parser.add_argument("--workers", type=int, default=3, help="workers in the group (default 3)")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs over the run (default 10)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the clicks and the kill schedule"
    )
    parser.add_argument(
        "--model",
        default="covisit",
        choices=("covisit", "popularity", "torch"),
        help="recommender of every worker (default covisit: see above)",
    )
    parser.add_argument("--users", type=int, default=5000, help="distinct users (default 5000)")
    parser.add_argument("--items", type=int, default=2000, help="distinct items (default 2000)")
    parser.add_argument(
        "--duration",
        type=float,
        default=240.0,
        help="seconds over which the clicks are produced (default 240)",
    )
    parser.add_argument(
        "--drain-quiet",
        type=float,
        default=90.0,
        help="give up draining after this many seconds without progress",
    )
    parser.add_argument("--no-replay", action="store_true", help="skip the replay comparison")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) at the end")
    parser.add_argument(
        "--log-level",
        default="warning",
        help="log level of the workers under faults (info shows each "
        "rebalance and recovery step in the kept logs)",
    )
    args = parser.parse_args(argv)
    for name in ("events", "workers", "users", "items"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.kills < 0 or args.duration <= 0:
        parser.error("--kills must be >= 0 and --duration > 0")

    # A SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so every child is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="streamrec-chaos-"))
    stack = None
    keep = args.keep
    try:
        stack = start_stack(workdir / "services")
        events = make_events(args.events, users=args.users, items=args.items, seed=args.seed)
        rng = random.Random(args.seed)
        run = chaos_run(
            stack,
            workdir,
            events,
            workers=args.workers,
            kills=args.kills,
            duration_s=args.duration,
            model=args.model,
            rng=rng,
            drain_quiet_s=args.drain_quiet,
            log_level=args.log_level,
        )
        again = (
            None
            if args.no_replay
            else replay_run(
                stack, workdir, events, model=args.model, drain_quiet_s=args.drain_quiet
            )
        )
        summary = report(args, events, run, again, time.monotonic() - started)
        failed = (
            summary["lost"]
            or summary["double_applied"]
            or summary["under_applied"]
            or summary["state_matches_replay"] is False
        )
        if failed:
            keep = True
            say(f"FAILED; logs kept in {workdir}")
        print(orjson.dumps(summary).decode(), flush=True)
        return 1 if failed else 0
    except KeyboardInterrupt:
        keep = True
        say(f"interrupted; stopping every process (logs kept in {workdir})")
        return 130
    except (ServiceError, ConnectionError, ValueError) as exc:
        keep = True
        say(f"error: {exc} (logs in {workdir})")
        return 1
    finally:
        if stack is not None:
            stack.close()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
