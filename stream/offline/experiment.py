"""`streamrec experiment report`: per variant users, clicks scored, HR@K and MRR@K read
from the clicks and recommendations topics, with 95% intervals, and each arm's
difference against the baseline with its interval and p-value (issue #16).

Which clicks are scored, and against what: stream/offline/experiment_scoring.py (the
worker's live rule, so the totals equal the live counters on the same stream). How the
topics are read: stream/offline/experiment_topics.py.

The test is a bootstrap over users (stream/offline/bootstrap.py): one user's clicks
are correlated (same tastes, lists from one model state) and the user, not the click,
is what the variants split, so users are resampled with all their clicks. The baseline
is `--baseline`, else the arm whose first scored list is the earliest; the other arms
are compared with it. A bad flag value is a usage error; no scored click, an unknown
baseline or an unreachable broker is one line on stderr and exit code 1 (stream/cli.py).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from stream.kafka.topics import require_topic
from stream.offline.bootstrap import DEFAULT_RESAMPLES, ArmEstimate, compare, estimate_arm
from stream.offline.experiment_scoring import Tally, score_clicks
from stream.offline.experiment_topics import read_clicks, read_served
from stream.preflight import check_broker
from stream.security import KafkaSecurity
from stream.settings import Settings

WHY_BOOTSTRAP = (
    "Intervals and p-values come from a bootstrap over users: each arm's users are drawn "
    "with replacement, each with all of their clicks, B times (the arms independently). "
    "It fits because one user's clicks are correlated (a per-click interval would be too "
    "narrow) and the user is the unit the variants are randomised by. Intervals are the "
    "2.5th-97.5th percentiles; the two-sided p-value of a difference is 2 * min(share of "
    "bootstrap differences <= 0, share >= 0), at least 1/B."
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `experiment` (with its `report` subcommand) to an `add_subparsers()` object;
    returns the `report` parser."""
    experiment: argparse.ArgumentParser = subparsers.add_parser(
        "experiment",
        help="compare the variants of an A/B experiment (experiment report)",
        description="Experiments across the variants of STREAMREC_VARIANTS.",
    )
    actions = experiment.add_subparsers(dest="action", metavar="ACTION", required=True)
    report: argparse.ArgumentParser = actions.add_parser(
        "report",
        help="per variant HR@K and MRR@K with 95%% intervals, and the differences",
        description="Read the recommendations and clicks topics from the beginning to their "
        "ends at start, score each user's click against the list the user received after "
        "their previous click (as the live hit rate does), and print per variant the users, "
        "clicks scored, HR@K and MRR@K with 95% intervals, then each variant's difference "
        "against the baseline with its interval and p-value. " + WHY_BOOTSTRAP,
    )
    report.add_argument("--bootstrap-servers", help="Kafka host:port (STREAMREC_BOOTSTRAP_SERVERS)")
    report.add_argument("--recommendations-topic", help="STREAMREC_RECOMMENDATIONS_TOPIC")
    report.add_argument("--clicks-topic", help="STREAMREC_CLICKS_TOPIC")
    report.add_argument(
        "--k", type=_positive_int, help="cut each list to K items (default: the whole list)"
    )
    report.add_argument(
        "--since",
        type=parse_time,
        help="score only clicks on lists whose event time is at or after this "
        "(epoch seconds or ISO 8601; UTC if no zone)",
    )
    report.add_argument(
        "--until", type=parse_time, help="... and before this (same formats as --since)"
    )
    report.add_argument(
        "--baseline",
        help="variant the others are compared with; '' or '(none)' names events without a "
        "variant (default: the variant whose first scored list is the earliest)",
    )
    report.add_argument(
        "--resamples",
        type=_positive_int,
        default=DEFAULT_RESAMPLES,
        help=f"bootstrap resamples B (default {DEFAULT_RESAMPLES})",
    )
    report.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    report.add_argument("--json", action="store_true", help="print one JSON object")
    return report


def run(args: argparse.Namespace) -> int:
    """Read, score and print. Blocks until both topics are read to their ends."""
    settings = Settings.from_env(
        bootstrap_servers=args.bootstrap_servers,
        clicks_topic=args.clicks_topic,
        recommendations_topic=args.recommendations_topic,
    )
    security = KafkaSecurity.from_settings(settings)
    servers = settings.bootstrap_servers
    check_broker(servers, security=security, timeout_s=settings.connect_timeout_s)
    for topic in (settings.recommendations_topic, settings.clicks_topic):
        require_topic(servers, topic, security=security)
    baseline = "" if args.baseline == "(none)" else args.baseline
    report = report_from_topics(
        settings,
        k=args.k,
        since=args.since,
        until=args.until,
        baseline=baseline,
        resamples=args.resamples,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    print(orjson.dumps(report).decode() if args.json else format_text(report), flush=True)
    return 0


def report_from_topics(
    settings: Settings,
    *,
    k: int | None = None,
    since: float | None = None,
    until: float | None = None,
    baseline: str | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """`build_report` over the clicks and recommendations topics of `settings`, each
    read from the beginning to its end at the start of the read."""
    security = KafkaSecurity.from_settings(settings)
    servers = settings.bootstrap_servers
    # Clicks first: a recommendation's click is in the topic before it is.
    clicked = read_clicks(
        servers,
        settings.clicks_topic,
        max_event_bytes=settings.max_event_bytes,
        security=security,
        progress=progress,
    )
    served = read_served(
        servers, settings.recommendations_topic, security=security, progress=progress
    )
    tally = score_clicks(
        served, clicked, k=k, since=since, until=until, dedup_window=settings.dedup_window
    )
    return build_report(tally, k=k, baseline=baseline, resamples=resamples, seed=seed)


def build_report(
    tally: Tally,
    *,
    k: int | None,
    baseline: str | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """The report as JSON-ready data (the `--json` output). Raises ValueError when no
    click was scored or `baseline` has none. Deterministic for a given `seed`: each
    arm resamples from its own stream spawned from it, in report order."""
    if not tally.users:
        raise ValueError(
            "no click could be scored: a user's first click never is, and each later one "
            "needs the user's previous recommendation (is the time range right?)"
        )
    order = arm_order(tally, baseline)
    streams = np.random.SeedSequence(seed).spawn(len(order))
    arms: dict[str, ArmEstimate] = {
        variant: estimate_arm(tally.totals(variant), resamples, np.random.default_rng(stream))
        for variant, stream in zip(order, streams, strict=True)
    }
    differences = {}
    for variant in order[1:]:
        diff = compare(arms[variant], arms[order[0]])
        differences[variant] = {
            "against": order[0],
            "hr_diff": diff.hr.estimate,
            "hr_ci": [diff.hr.low, diff.hr.high],
            "hr_p": diff.hr_p,
            "mrr_diff": diff.mrr.estimate,
            "mrr_ci": [diff.mrr.low, diff.mrr.high],
            "mrr_p": diff.mrr_p,
        }
    arms_of_user = Counter(user for variant in order for user in tally.users[variant])
    return {
        "k": k,
        "variants": {
            variant: {
                "users": arm.users,
                "clicks_scored": arm.clicks,
                "hr": arm.hr.estimate,
                "hr_ci": [arm.hr.low, arm.hr.high],
                "mrr": arm.mrr.estimate,
                "mrr_ci": [arm.mrr.low, arm.mrr.high],
            }
            for variant, arm in arms.items()
        },
        "differences": differences,
        "test": f"bootstrap over users, B={resamples}, seed={seed}: 95% percentile "
        "intervals; two-sided p = 2*min(share of differences <= 0, share >= 0), "
        "at least 1/B",
        # Users the split put in more than one arm (it changed mid-stream): each arm
        # counts them, and the arms are then not quite independent.
        "users_in_several_arms": sum(1 for n in arms_of_user.values() if n > 1),
        "left_out": {
            "repeated_events": tally.repeated,
            "clicks_not_found": tally.unmatched,
            "unreadable_events": tally.unreadable,
        },
    }


def arm_order(tally: Tally, baseline: str | None) -> list[str]:
    """The arms, baseline first: `baseline`, else the arm scored earliest (event
    time of its first scored list, then name); the rest in that order."""
    order = sorted(tally.users, key=lambda v: (tally.first_time[v], v))
    if baseline is None:
        return order
    if baseline not in tally.users:
        arms = ", ".join(display(v) for v in order)
        raise ValueError(f"baseline {display(baseline)} has no scored clicks; the arms: {arms}")
    return [baseline, *(v for v in order if v != baseline)]


def format_text(report: dict[str, Any]) -> str:
    """The report as two tables, the arms then their differences against the baseline,
    with the test used and anything left out below."""
    at = f"@{report['k']}" if report["k"] else ""
    hr, mrr = f"HR{at}", f"MRR{at}"
    cut = f"lists cut to K={report['k']}" if report["k"] else "whole lists, as live"
    lines = [
        f"{hr} and {mrr} per variant ({cut}), with 95% intervals",
        "",
        f"{'variant':<16}{'users':>9}{'clicks scored':>15}  {hr:<27}{mrr}",
    ]
    for name, arm in report["variants"].items():
        lines.append(
            f"{display(name):<16}{arm['users']:>9,}{arm['clicks_scored']:>15,}  "
            f"{_with_ci(arm['hr'], arm['hr_ci']):<27}{_with_ci(arm['mrr'], arm['mrr_ci'])}"
        )
    if report["differences"]:
        against = display(next(iter(report["differences"].values()))["against"])
        lines += ["", f"difference against {against} (the baseline)"]
        lines.append(f"{'variant':<16}{hr:<29}{'p':<9}{mrr:<29}p")
        for name, diff in report["differences"].items():
            lines.append(
                f"{display(name):<16}{_with_ci(diff['hr_diff'], diff['hr_ci'], '+'):<29}"
                f"{diff['hr_p']:<9.4f}{_with_ci(diff['mrr_diff'], diff['mrr_ci'], '+'):<29}"
                f"{diff['mrr_p']:.4f}"
            )
    lines += ["", f"test: {report['test']}"]
    notes = {"users_in_several_arms": report["users_in_several_arms"], **report["left_out"]}
    left = ", ".join(f"{name.replace('_', ' ')} {n:,}" for name, n in notes.items() if n)
    if left:
        lines.append(f"left out or worth knowing: {left}")
    return "\n".join(lines)


def display(variant: str) -> str:
    """A variant's name as printed: events without one are "(none)"."""
    return variant or "(none)"


def parse_time(text: str) -> float:
    """Epoch seconds, or an ISO 8601 time (UTC when it names no zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither epoch seconds nor an ISO 8601 time"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {text!r}")
    return value


def _with_ci(value: float, interval: list[float], sign: str = "") -> str:
    low, high = interval
    return f"{value:{sign}.4f} [{low:{sign}.4f}, {high:{sign}.4f}]"
