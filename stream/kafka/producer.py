"""Replay click payloads into the clicks topic (and catalogue records into the items
topic) with kafka-python, at a chosen rate."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from kafka import KafkaProducer
from kafka.errors import KafkaError
from tqdm import tqdm

from stream.interrupts import raise_if_interrupted
from stream.kafka.topics import BrokerUnreachable
from stream.security import PLAINTEXT, KafkaSecurity


@dataclass
class ReplayResult:
    sent: int = 0
    seconds: float = 0.0
    # event_id -> record timestamp (ms) we gave the click, for latency accounting.
    sent_at_ms: dict[str, int] = field(default_factory=dict)


def make_producer(bootstrap_servers: str, *, security: KafkaSecurity = PLAINTEXT) -> KafkaProducer:
    options = security.client_options()
    try:
        return KafkaProducer(
            bootstrap_servers=bootstrap_servers.split(","),
            client_id="streamrec-producer",
            linger_ms=2,
            acks=1,
            bootstrap_timeout_ms=10_000,
            **options,
        )
    except (KafkaError, OSError, ValueError) as exc:
        raise BrokerUnreachable(bootstrap_servers, security) from exc


def replay(
    records: Iterable[dict[str, Any] | bytes | tuple[bytes, bytes]],
    *,
    bootstrap_servers: str,
    topic: str,
    rate: float = 0.0,
    total: int | None = None,
    progress: bool = True,
    producer: KafkaProducer | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> ReplayResult:
    """Send every record (a payload dict, raw bytes sent as they are, or a (key, value)
    pair of bytes) to `topic`.

    Dict payloads are keyed by their `user_id`, raw bytes by nothing. `rate` is records
    per second; 0 sends as fast as the client goes. Blocks until every record is
    acknowledged. `security` applies to the producer made here (not to a `producer`
    passed in).
    """
    own_producer = producer is None
    producer = producer or make_producer(bootstrap_servers, security=security)
    result = ReplayResult()
    started = time.monotonic()
    bar = tqdm(
        total=total, unit="ev", desc="produce", disable=not progress, leave=False, mininterval=0.5
    )
    try:
        for i, record in enumerate(records):
            raise_if_interrupted()  # a Ctrl-C swallowed by a finaliser (stream/interrupts.py)
            if rate > 0:
                ahead = started + i / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            now_ms = int(time.time() * 1000)
            if isinstance(record, bytes):
                producer.send(topic, value=record, timestamp_ms=now_ms)
            elif isinstance(record, tuple):
                producer.send(topic, key=record[0], value=record[1], timestamp_ms=now_ms)
            else:
                key = str(record.get("user_id", "")).encode() or None
                producer.send(topic, key=key, value=orjson.dumps(record), timestamp_ms=now_ms)
                if "event_id" in record:
                    # A deliberate repeat keeps the first send time: latency runs from the
                    # click that was applied.
                    result.sent_at_ms.setdefault(str(record["event_id"]), now_ms)
            result.sent += 1
            bar.update()
        producer.flush()
    finally:
        bar.close()
        if own_producer:
            # Bounded: after a Ctrl-C inside `send` kafka-python's close() without a
            # timeout can wait for ever on a flush that never completes.
            producer.close(timeout=5)
    result.seconds = time.monotonic() - started
    return result
