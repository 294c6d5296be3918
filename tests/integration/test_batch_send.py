"""KeyedBatchSender over the real broker (stream/kafka/batch_send.py): every record lands
on the partition `producer.send` gives its key, each partition's records in the order
sent, also when a partition's records fill several record batches and when two calls
overlap."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.dev.services import DevStack
from stream.kafka.batch_send import KeyedBatchSender
from stream.kafka.topics import ensure_topics

PARTITIONS = 3


async def _read_all(bootstrap: str, topic: str, expected: int) -> list[tuple[int, bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[tuple[int, bytes, bytes]] = []
    try:
        async with asyncio.timeout(30):
            while len(records) < expected:
                batches = await consumer.getmany(timeout_ms=500)
                for tp, messages in sorted(batches.items()):
                    records += [(tp.partition, m.key, m.value) for m in messages]
    finally:
        await consumer.stop()
    return records


def test_records_land_where_producer_send_puts_them_in_order(dev_stack: DevStack) -> None:
    tag = uuid.uuid4().hex[:8]
    by_send, by_batch = f"by-send-{tag}", f"by-batch-{tag}"
    ensure_topics(dev_stack.bootstrap_servers, [by_send, by_batch], partitions=PARTITIONS)
    keys = [f"user-{n}".encode() for n in range(60)]
    # Three rounds of every key, in two overlapping calls per round: the values say
    # which round and call each record came from.
    rounds = [[(key, f"{key.decode()}:{r}".encode()) for key in keys] for r in range(3)]

    async def main() -> tuple[list[tuple[int, bytes, bytes]], list[tuple[int, bytes, bytes]]]:
        # A small batch size, so each partition's records of one call take several batches.
        producer = AIOKafkaProducer(
            bootstrap_servers=dev_stack.bootstrap_servers, max_batch_size=512
        )
        await producer.start()
        try:
            for records in rounds:
                for key, value in records:
                    await producer.send(by_send, value, key=key)
            await producer.flush()
            sender = KeyedBatchSender(lambda: producer, by_batch)
            futures = []
            for records in rounds:
                half = len(records) // 2
                calls = await asyncio.gather(
                    sender.send(records[:half]), sender.send(records[half:])
                )
                futures += [future for call in calls for future in call]
            assert len(futures) > 3 * PARTITIONS  # full batches were cut and sent on
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        total = sum(len(records) for records in rounds)
        return (
            await _read_all(dev_stack.bootstrap_servers, by_send, total),
            await _read_all(dev_stack.bootstrap_servers, by_batch, total),
        )

    sent_one_by_one, sent_in_batches = asyncio.run(main())

    def per_partition(records: list[tuple[int, bytes, bytes]]) -> dict[int, list[bytes]]:
        values: dict[int, list[bytes]] = defaultdict(list)
        for partition, _, value in records:
            values[partition].append(value)
        return dict(values)

    assert len(per_partition(sent_in_batches)) == PARTITIONS
    # Same partition for every key, and each partition's records in the order sent.
    assert per_partition(sent_in_batches) == per_partition(sent_one_by_one)
