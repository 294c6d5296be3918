"""`TopicFollower`: every partition of a topic read from the beginning by every worker,
with no consumer group, for the topics each worker must hold whole (the broadcast item
vectors, the catalogue)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.kafka.fetch_wait import FetchWait, adapt_fetch_wait, partitions_behind
from stream.security import PLAINTEXT, KafkaSecurity

log = logging.getLogger(__name__)

# Takes one record's key and value; must not raise on a value it cannot read.
TakeRecord = Callable[[bytes | None, bytes | None], None]


class TopicFollower:
    """Reads every partition of `topic` from the beginning, with no consumer group, and
    hands each record to `take_record(key, value)`, in order within a partition.

    `caught_up` is set once the reader has reached the end of every partition as it was
    when reading started (or found the topic empty), so the worker can hold clicks until
    what the topic holds is applied. End offsets come from fetch responses' high
    watermarks: the embedded broker under-reports ListOffsets (correction I1,
    docs/embedded-broker.md). `what` names the topic's contents in the log.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        partitions: int,
        take_record: TakeRecord,
        *,
        what: str,
        fetch_max_wait_ms: int = 10,
        idle_caught_up_s: float = 1.0,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.security = security
        self.topic = topic
        self.partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self.take_record = take_record
        self.what = what
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.idle_caught_up_s = idle_caught_up_s
        self.caught_up = asyncio.Event()
        self.records_read = 0
        self._rounds = 0  # fetch rounds completed
        self._at_end_of: set[int] = set()  # partitions read to their high watermark
        self._progress = asyncio.Event()

    async def run(self) -> None:
        """Follow the topic until cancelled."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers.split(","),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            client_id=f"streamrec-follower-{self.topic}",
            **self.security.client_options(),
        )
        await consumer.start()
        try:
            consumer.assign(self.partitions)
            await consumer.seek_to_beginning(*self.partitions)
            loop = asyncio.get_running_loop()
            idle_since = loop.time()
            wait = FetchWait(self.fetch_max_wait_ms)
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        self.records_read += 1
                        self.take_record(record.key, record.value)
                if batches:
                    idle_since = loop.time()
                # Far behind on the embedded broker, short fetches come back empty.
                adapt_fetch_wait(consumer, wait, bool(batches))
                self._at_end_of = await self._partitions_at_end(consumer)
                self._rounds += 1
                self._progress.set()
                self._progress.clear()
                # Idle counts as caught up only where no partition is known to be
                # behind: an empty fetch is not the end of the topic.
                if not self.caught_up.is_set() and (
                    len(self._at_end_of) == len(self.partitions)
                    or (
                        loop.time() - idle_since > self.idle_caught_up_s
                        and not partitions_behind(consumer)
                    )
                ):
                    log.info("%s caught up: %d records read", self.what, self.records_read)
                    self.caught_up.set()
        finally:
            await consumer.stop()

    async def sync(self, partitions: set[int]) -> None:
        """Return once this follower has read `partitions` to their end as seen by a
        fetch made after the call: everything written to them before it is applied."""
        target = self._rounds + 2  # the round in progress may predate the call
        while self._rounds < target or not partitions <= self._at_end_of:
            await self._progress.wait()

    async def _partitions_at_end(self, consumer: AIOKafkaConsumer) -> set[int]:
        done = set()
        for tp in self.partitions:
            highwater = consumer.highwater(tp)
            if highwater is not None and await consumer.position(tp) >= highwater:
                done.add(tp.partition)
        return done


__all__ = ["TakeRecord", "TopicFollower"]
