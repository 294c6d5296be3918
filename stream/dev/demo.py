"""`streamrec dev`: the whole path on embedded services, end to end, with a summary.

Starts the embedded broker and Redis server, creates the topics, starts a worker
process, replays a synthetic stream (with malformed records and repeated event ids
mixed in), reads the recommendations and the dead-letter topic, and prints one JSON
summary line. Every process it starts is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream.dev.generate import malformed_records, planted_context_clicks, synthetic_clicks
from stream.dev.harness import scrape_metric, start_worker, wait_for
from stream.dev.services import DevStack, free_port, start_stack, stop
from stream.events import Recommendation
from stream.interrupts import raise_if_interrupted
from stream.kafka.consumer import make_consumer
from stream.kafka.producer import replay
from stream.kafka.topics import ensure_topics, worker_topics
from stream.offline.experiment import format_text, report_from_topics
from stream.security import KafkaSecurity
from stream.settings import Settings


def demo_stream(
    events: int,
    *,
    users: int,
    items: int,
    seed: int,
    bad_every: int,
    repeat_every: int,
    max_bytes: int,
    planted: bool = False,
) -> Iterator[dict[str, Any] | bytes]:
    """`events` records: synthetic clicks (`planted`: the context-only stream of
    `planted_context_clicks`, for the A/B demo), every `bad_every`-th a malformed record
    and every `repeat_every`-th a repeat of the previous click (same event_id)."""
    clicks = (
        planted_context_clicks(events, users=users, seed=seed)
        if planted
        else synthetic_clicks(events, users=users, items=items, seed=seed)
    )
    bad = malformed_records(max_bytes)
    previous: dict[str, Any] | None = None
    for i in range(events):
        if bad_every and i % bad_every == bad_every - 1:
            yield bad[(i // bad_every) % len(bad)][0]
        elif repeat_every and previous is not None and i % repeat_every == repeat_every - 1:
            yield previous
        else:
            previous = next(clicks)
            yield previous


@dataclass
class TopicCounts:
    """What the demo read back: first recommendation time per source event, and more."""

    recommendation_ms: dict[str, int] = field(default_factory=dict)
    recommendation_records: int = 0
    rejected: int = 0
    invalid_recommendations: int = 0


def read_outputs(settings: Settings) -> TopicCounts:
    """Read the recommendations and the DLQ from the start until they go quiet.

    Done after the stream, not during it: a reader thread in this process would compete
    with the producer for the GIL and delay the clicks it is timing.
    """
    counts = TopicCounts()
    consumer = make_consumer(
        settings.bootstrap_servers,
        [settings.recommendations_topic, settings.dlq_topic],
        idle_timeout_s=2.0,
        security=KafkaSecurity.from_settings(settings),
    )
    try:
        for record in consumer:
            if record.topic == settings.dlq_topic:
                counts.rejected += 1
                continue
            counts.recommendation_records += 1
            try:
                rec = Recommendation.from_json(record.value)
            except ValueError:
                counts.invalid_recommendations += 1
                continue
            counts.recommendation_ms.setdefault(rec.source_event_id, record.timestamp)
    finally:
        consumer.close()
    return counts


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run_dev(
    *,
    events: int,
    rate: float,
    model: str,
    users: int = 500,
    items: int = 300,
    seed: int = 0,
    bad_every: int = 100,
    repeat_every: int = 97,
    hold: bool = False,
    drain_timeout_s: float = 60.0,
    progress: bool = True,
    variants: str = "",
    experiment: str = "demo",
) -> dict[str, Any]:
    """Run the demo; returns the summary (also what `streamrec dev` prints).

    `variants` (STREAMREC_VARIANTS) runs an A/B experiment instead of `model`, on the
    planted stream whose targets only a model of the user's context predicts
    (`planted_context_clicks`), served without exclusions (every episode revisits the
    same hub items, which `seen` would hide), and ends with the experiment report of
    the topics (`streamrec experiment report`), under the summary's `experiment`."""
    stack: DevStack | None = None
    worker = None
    try:
        say(progress, "starting the embedded broker and Redis server ...")
        stack = start_stack()
        settings = Settings.from_env(
            {},
            bootstrap_servers=stack.bootstrap_servers,
            redis_url=stack.redis_url,
            web_port=free_port(),
            model=model,
            seed=seed,
            data_dir=str(stack.workdir / "worker"),
            **(
                {"variants": variants, "experiment": experiment, "exclude": "none"}
                if variants
                else {}
            ),
        )
        ensure_topics(settings.bootstrap_servers, worker_topics(settings), settings.partitions)
        say(
            progress,
            f"broker {stack.bootstrap_servers}, Redis {stack.redis_url}; starting worker ...",
        )
        worker = start_worker(settings, stack.workdir / "worker.log")
        web = f"http://{settings.web_host}:{settings.web_port}"
        say(progress, f"worker ready; live dashboard at {web}/dashboard (metrics: {web}/metrics)")

        records = demo_stream(
            events,
            users=users,
            items=items,
            seed=seed,
            bad_every=bad_every,
            repeat_every=repeat_every,
            max_bytes=settings.max_event_bytes,
            planted=bool(variants),
        )
        sent = replay(
            records,
            bootstrap_servers=settings.bootstrap_servers,
            topic=settings.clicks_topic,
            rate=rate,
            total=events,
            progress=progress,
        )
        repeats = sent.sent - len(sent.sent_at_ms) - _count_bytes(events, bad_every)
        expected = len(sent.sent_at_ms)
        metrics_url = f"http://{settings.web_host}:{settings.web_port}/metrics"
        wait_for(
            lambda: int(scrape_metric(metrics_url, "streamrec_recommendations_emitted_total") or 0),
            expected,
            drain_timeout_s,
            progress,
        )
        outputs = read_outputs(settings)
        latencies = [
            outputs.recommendation_ms[event_id] - sent_ms
            for event_id, sent_ms in sent.sent_at_ms.items()
            if event_id in outputs.recommendation_ms
        ]
        summary: dict[str, Any] = {
            "events_produced": sent.sent,
            "events_rejected": outputs.rejected,
            "duplicates_sent": repeats,
            "events_accepted": expected,
            "recommendations": len(outputs.recommendation_ms),
            "recommendation_records": outputs.recommendation_records,
            "invalid_recommendations": outputs.invalid_recommendations,
            "latency_ms_p50": percentile(latencies, 50),
            "latency_ms_p99": percentile(latencies, 99),
            "latency_ms_max": max(latencies) if latencies else None,
            "produce_events_per_s": round(sent.sent / sent.seconds, 1) if sent.seconds else None,
            "model": variants or model,
        }
        if variants:
            say(progress, "reading the topics for the experiment report ...")
            summary["experiment"] = report_from_topics(settings, progress=progress)
        if hold:
            print_table(summary)
            print(orjson.dumps(summary).decode(), flush=True)
            say(True, f"holding the stack up; dashboard at {web}/dashboard (Ctrl-C to stop)")
            while True:
                time.sleep(1.0)
                raise_if_interrupted()
        return summary
    finally:
        if worker is not None:
            stop(worker, timeout=15)
        if stack is not None:
            stack.close()


def _count_bytes(events: int, bad_every: int) -> int:
    return events // bad_every if bad_every else 0


def print_table(summary: dict[str, Any]) -> None:
    """The summary as an aligned two-column table on stderr, for people."""
    width = max(len(key) for key in summary)
    for key, value in summary.items():
        if key != "experiment":
            print(f"  {key:<{width}}  {value}", file=sys.stderr)
    if "experiment" in summary:
        print("\n" + format_text(summary["experiment"]), file=sys.stderr)
    sys.stderr.flush()


def say(enabled: bool, text: str) -> None:
    if enabled:
        print(f"streamrec: {text}", file=sys.stderr, flush=True)
