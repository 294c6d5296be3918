"""A partition behind while the worker works through a backlog elsewhere is one WARNING,
not an ERROR at every check (stream/kafka/slow_streams.py; stream/kafka/transport.py,
correction 9). Issue 17: a worker logged 187 ERRORs "Stream stopped processing, or is
slow for TP(topic='streamrec-item-deltas', ...)" while every click was processed."""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

import pytest
from faust.transport.drivers import aiokafka as driver
from faust.types import TP

from stream.kafka import internals
from tests.regression._consumer import run_with_consumer

DELTAS = TP("streamrec-item-deltas", 0)
CLICKS = TP("clicks", 0)
CHECKS = 25  # faust's check runs every 7 s: about 3 minutes of a stall


def faust_reports_slow(consumer: Any, tp: TP, inbound_s_ago: float) -> None:
    """What faust's verify_event_path does for a partition with records waiting whose
    stream took its last record `inbound_s_ago` seconds ago."""
    since = f"{inbound_s_ago / 60:.2f} minutes ago"
    thread = internals.consumer_thread(consumer)
    thread._log_slow_processing_stream(driver.SLOW_PROCESSING_STREAM_IDLE, tp, since)


def test_a_backlog_elsewhere_is_said_once_and_a_stopped_worker_stays_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def body(consumer: Any) -> None:
        inbound = consumer.app.monitor.stream_inbound_time
        internals.read_offsets(consumer)[DELTAS] = 99  # the stream has taken 0..99
        consumer.highwater = lambda tp: 1_234 if tp == DELTAS else None
        now = time.monotonic()

        # Clicks flow (a record taken a second ago); the deltas partition waits 430 s.
        inbound.update({CLICKS: now - 1, DELTAS: now - 430})
        for _ in range(CHECKS):
            faust_reports_slow(consumer, DELTAS, 430)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert [r.levelno for r in caplog.records] == [logging.WARNING]  # stock: 25 ERRORs
        assert "1,134 records waiting" in warnings[0].getMessage()

        # The deltas stream takes a record, then stalls again: a new stall, said again.
        inbound[DELTAS] = now - 310
        faust_reports_slow(consumer, DELTAS, 310)
        assert [r.levelno for r in caplog.records] == [logging.WARNING] * 2

        # Nothing taken anywhere for longer than the timeout: the worker has stopped,
        # and faust's ERROR stands at every check.
        caplog.clear()
        inbound[CLICKS] = now - 400
        for _ in range(3):
            faust_reports_slow(consumer, DELTAS, 430)
        assert [r.levelno for r in caplog.records] == [logging.ERROR] * 3
        assert "Stream stopped processing, or is slow" in caplog.records[0].getMessage()

    with caplog.at_level(logging.WARNING):
        run_with_consumer(DELTAS.topic, body)


def test_faust_still_reports_a_slow_stream_through_the_hook() -> None:
    # Correction 9 overrides this private hook: if faust stops calling it for the
    # "stopped or slow" case, the ERRORs come back unseen.
    source = inspect.getsource(driver.AIOKafkaConsumerThread.verify_event_path)
    assert "self._log_slow_processing_stream(\n" in source
    assert "SLOW_PROCESSING_STREAM_IDLE," in source
