"""A broker that stops answering for 30 s mid-stream (SIGSTOP, then SIGCONT): the worker
recovers by itself, loses no click and applies none twice (issue 14). Judged like the
kill tests (stream/dev/audit.py), on its own broker and Redis, since the session's are
shared. About a minute and a half."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.dev import audit
from stream.dev.cluster import Cluster, Recommended, fresh_topics, make_events, wait_drained
from stream.dev.harness import scrape_metric
from stream.dev.services import DevStack, start_stack
from stream.kafka.producer import replay

pytestmark = pytest.mark.integration

STOPPED_S = 30


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[DevStack]:
    stack = start_stack(tmp_path / "stack")
    try:
        yield stack
    finally:
        os.kill(stack.broker_process.pid, signal.SIGCONT)  # if the test failed while stopped
        stack.close()


def test_a_broker_stopped_mid_stream_loses_nothing_and_applies_nothing_twice(
    own_stack: DevStack, tmp_path: Path
) -> None:
    settings = fresh_topics(own_stack, tmp_path / "data", model="covisit", log_level="info")
    events = make_events(2000, users=200, items=150, seed=14)
    half = len(events) // 2
    cluster = Cluster(settings, 1, tmp_path / "logs")
    broker = own_stack.broker_process.pid
    worker = cluster.slots[0]
    metrics_url = f"http://{worker.web_host}:{worker.web_port}/metrics"
    try:
        cluster.start()
        with Recommended(settings) as recommended:
            # Faster than the worker applies them, so it is mid-stream when the broker stops.
            replay(
                events[:half],
                bootstrap_servers=settings.bootstrap_servers,
                topic=settings.clicks_topic,
                progress=False,
            )
            os.kill(broker, signal.SIGSTOP)
            emitted_at_stop = scrape_metric(metrics_url, "streamrec_recommendations_emitted_total")
            try:
                time.sleep(STOPPED_S)
            finally:
                os.kill(broker, signal.SIGCONT)
            replay(
                events[half:],
                bootstrap_servers=settings.bootstrap_servers,
                topic=settings.clicks_topic,
                rate=400.0,
                progress=False,
            )
            drained = wait_drained(lambda: len(recommended.ids), len(events), 30, lambda _: None)
        assert cluster.crashed() == [], "the worker died instead of recovering"
        time.sleep(2)  # user records follow their recommendations by a flush
        verdict = audit.check(
            events, audit.recommendation_counts(settings), audit.final_user_records(settings)
        )
    finally:
        cluster.close()
    print(verdict, f"recommendations out when the broker stopped: {emitted_at_stop}")
    # Mid-stream: clicks were still to be applied when the broker stopped.
    assert emitted_at_stop is not None and emitted_at_stop < half
    assert drained, f"{len(recommended.ids)} of {len(events)} clicks recommended"
    assert verdict.events == len(events)
    assert verdict.lost == 0, verdict.lost_ids
    assert verdict.double_applied == 0
    assert verdict.under_applied == 0
