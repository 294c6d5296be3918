"""Reading the output topics with kafka-python (the `consume` command and the demo)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from stream.kafka.topics import BrokerUnreachable
from stream.security import PLAINTEXT, KafkaSecurity


def make_consumer(
    bootstrap_servers: str,
    topics: list[str],
    *,
    from_beginning: bool = True,
    idle_timeout_s: float | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> KafkaConsumer:
    """A group-less consumer of `topics`; iteration stops after `idle_timeout_s` of
    silence (None: never)."""
    options = security.client_options()
    try:
        return KafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap_servers.split(","),
            client_id=f"streamrec-consume-{uuid.uuid4().hex[:8]}",
            group_id=None,
            auto_offset_reset="earliest" if from_beginning else "latest",
            enable_auto_commit=False,
            consumer_timeout_ms=int(idle_timeout_s * 1000) if idle_timeout_s else float("inf"),
            bootstrap_timeout_ms=10_000,
            **options,
        )
    except (KafkaError, OSError, ValueError) as exc:
        raise BrokerUnreachable(bootstrap_servers, security) from exc


def tail(
    bootstrap_servers: str,
    topic: str,
    *,
    from_beginning: bool = True,
    idle_timeout_s: float | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> Iterator[ConsumerRecord]:
    consumer = make_consumer(
        bootstrap_servers,
        [topic],
        from_beginning=from_beginning,
        idle_timeout_s=idle_timeout_s,
        security=security,
    )
    try:
        yield from consumer
    finally:
        consumer.close()
