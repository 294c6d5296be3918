"""A consumer far behind on a partition of many small record batches still reads it
all (stream/kafka/fetch_wait.py; stream/kafka/transport.py, correction 5): the embedded
broker gives up on a fetch when its wait ends, before it has read old records, so a
fixed short wait returned nothing, forever (docs/embedded-broker.md)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.items.ledger import CanonicalVector
from stream.items.sync import VectorFollower, encode_vectors
from stream.kafka.topics import ensure_topics

pytestmark = pytest.mark.integration

RECORDS = 5000
SHORT_WAIT_MS = 1  # short enough to starve on this many batches on any machine here


async def produce_small_batches(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, max_batch_size=256)
    await producer.start()
    try:
        pending = []
        for n in range(RECORDS):
            vector = CanonicalVector(f"item{n}", np.ones(4, dtype=np.float32), 1, {}, None, 1)
            pending.append(await producer.send(topic, encode_vectors([vector]), partition=0))
            if len(pending) >= 200:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def fixed_wait_reads(bootstrap: str, topic: str) -> int:
    """Records a plain consumer with the short wait gets from the start in 2 s."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=SHORT_WAIT_MS
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        got = await consumer.getmany(tp, timeout_ms=2000, max_records=10)
        return len(got.get(tp, []))
    finally:
        await consumer.stop()


def test_a_follower_far_behind_reads_every_record_before_it_says_caught_up(
    dev_stack: Any,
) -> None:
    topic = f"starve-{uuid.uuid4().hex[:8]}"
    ensure_topics(dev_stack.bootstrap_servers, [topic], 1)
    seen: list[str] = []

    async def run() -> tuple[int, int]:
        await produce_small_batches(dev_stack.bootstrap_servers, topic)
        plain = await fixed_wait_reads(dev_stack.bootstrap_servers, topic)
        follower = VectorFollower(
            dev_stack.bootstrap_servers,
            topic,
            1,
            lambda entries: seen.extend(e.item_id for e in entries),
            fetch_max_wait_ms=SHORT_WAIT_MS,
            idle_caught_up_s=1.0,
        )
        task = asyncio.create_task(follower.run())
        try:
            await asyncio.wait_for(follower.caught_up.wait(), timeout=120)
            return plain, follower.records_read
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    plain, read_when_caught_up = asyncio.run(run())
    print(
        f"fixed {SHORT_WAIT_MS} ms wait read {plain} records in 2 s; "
        f"the follower read {read_when_caught_up} of {RECORDS} before caught up"
    )
    assert read_when_caught_up == RECORDS
    assert len(set(seen)) == RECORDS
