"""The whole bad-input corpus among valid clicks, through one worker process.

Every bad record reaches the DLQ with its reason (or, for a repeat and a late click,
meets its policy and is counted), every valid click gets exactly one recommendation,
and the worker neither exits nor restarts its agents.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import psutil
import pytest
from kafka import KafkaProducer

from stream.dev.generate import (
    DUPLICATE,
    OUT_OF_ORDER,
    POLICIES,
    bad_input_corpus,
    synthetic_clicks,
)
from stream.events import Recommendation
from stream.kafka.consumer import make_consumer
from stream.settings import Settings

pytestmark = pytest.mark.integration


def collect(
    settings: Settings, topic: str, done: Callable[[list[Any]], bool], timeout_s: float = 45.0
) -> list[Any]:
    """Every record of `topic` from the start until `done(records)` or the timeout."""
    consumer = make_consumer(settings.bootstrap_servers, [topic], idle_timeout_s=0.3)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(records) and time.monotonic() < deadline:
            records.extend(consumer)
    finally:
        consumer.close()
    return records


def samples(url: str) -> dict[str, float]:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        name: float(value)
        for line in body.splitlines()
        if line and not line.startswith("#")
        for name, value in [line.rsplit(" ", 1)]
    }


def test_the_bad_input_corpus_among_valid_clicks(worker_factory: Any) -> None:
    worker = worker_factory()
    settings, pid = worker.settings, worker.process.pid
    tag = uuid.uuid4().hex[:6]
    now = time.time()
    corpus = bad_input_corpus(settings.max_event_bytes, now=now, tag=tag)
    valid = list(synthetic_clicks(200, users=30, items=40, seed=12))
    for n, click in enumerate(valid):
        click.update(
            user_id=f"{tag}-{click['user_id']}",
            event_id=f"{tag}-{click['event_id']}",
            timestamp=now + n * 0.001,
        )  # in order per user

    # (key, value): valid clicks keyed by user, as `streamrec produce` sends them; one bad
    # record after every seventh; a policy record's `after` three valid clicks earlier.
    stream: list[tuple[bytes | None, bytes]] = []
    bad = iter(corpus)
    pending: list[tuple[int, Any]] = []
    for n, click in enumerate(valid):
        stream.append((click["user_id"].encode(), orjson.dumps(click)))
        if n % 7 == 3 and (record := next(bad, None)) is not None:
            if record.expect in POLICIES:
                stream.append((record.key, record.after))
                pending.append((n + 3, record))
            else:
                stream.append((None, record.value))
        stream += [(r.key, r.value) for due, r in pending if due == n]
    assert next(bad, None) is None and all(due < len(valid) for due, _ in pending)

    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers.split(","),
        max_request_size=32 << 20,
        linger_ms=2,
        acks=1,
    )
    try:
        for key, value in stream:
            producer.send(settings.clicks_topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()

    rejected = [r for r in corpus if r.expect not in POLICIES]
    by_policy = {r.expect: orjson.loads(r.value) for r in corpus if r.expect in POLICIES}
    # Every valid click gets a recommendation: the generated ones, each policy record's
    # `after`, and the late click (applied); the repeat gets none of its own.
    wanted = (
        {c["event_id"] for c in valid}
        | {orjson.loads(r.after)["event_id"] for r in corpus if r.after}
        | {by_policy[OUT_OF_ORDER]["event_id"]}
    )

    def sources(records: list[Any]) -> list[str]:
        return [Recommendation.from_json(r.value).source_event_id for r in records]

    # Done when every record was read, the repeat skipped and every click answered.
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        metrics = samples(worker.metrics_url)
        if (
            metrics.get("streamrec_events_consumed_total") == len(stream)
            and metrics.get("streamrec_duplicates_skipped_total") == 1
            and metrics.get("streamrec_recommendations_emitted_total") == len(wanted)
        ):
            break
        time.sleep(0.5)
    recs = collect(settings, settings.recommendations_topic, lambda rs: set(sources(rs)) >= wanted)
    dead = collect(settings, settings.dlq_topic, lambda rs: len(rs) >= len(rejected))

    counts = Counter(sources(recs))
    assert set(counts) == wanted
    assert all(n == 1 for n in counts.values()), [e for e, n in counts.items() if n > 1]

    # Each bad record in the DLQ with its reason; a too-large value cut to the limit.
    limit = settings.max_event_bytes
    expected = sorted((r.value[:limit], r.expect) for r in rejected)
    assert sorted((d.value, dict(d.headers)["error"].decode()) for d in dead) == expected
    for d in dead:
        headers = dict(d.headers)
        if headers["error"] == b"too_large":
            original = next(r.value for r in rejected if r.value[:limit] == d.value)
            assert int(headers["value_bytes"]) == len(original)
        assert headers["detail"] or headers["error"] == b"empty"
    # A millisecond timestamp's detail tells the producer what to send instead.
    (millis,) = [d for d in dead if b'"bad":"millisecond_timestamp"' in d.value]
    assert b"it looks like milliseconds: send seconds" in dict(millis.headers)["detail"]

    metrics = samples(worker.metrics_url)
    by_reason = {  # every reason is pre-created at 0; those the corpus hit count it
        name.split('"')[1]: value
        for name, value in metrics.items()
        if name.startswith("streamrec_events_rejected_total{") and value
    }
    assert by_reason == dict(Counter(r.expect for r in rejected))
    assert metrics["streamrec_duplicates_skipped_total"] == 1
    assert metrics["streamrec_events_out_of_order_total"] == 1
    assert metrics["streamrec_events_consumed_total"] == len(stream)
    assert metrics["streamrec_recommendations_emitted_total"] == len(wanted)
    late = next(
        Recommendation.from_json(r.value)
        for r in recs
        if Recommendation.from_json(r.value).source_event_id == by_policy[OUT_OF_ORDER]["event_id"]
    )
    assert late.event_time == by_policy[OUT_OF_ORDER]["timestamp"]
    assert by_policy[DUPLICATE]["event_id"] in counts

    # The same process, still running, and no agent crashed and restarted inside it.
    assert worker.process.poll() is None and worker.process.pid == pid
    assert psutil.Process(pid).is_running()
    log = worker.log_path.read_text(errors="replace")
    assert "Crashed" not in log and "Traceback" not in log, worker.log_tail()
