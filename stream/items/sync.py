"""Item vectors across workers, on the wire: the codec of the item-deltas and
item-vectors records, and `VectorFollower`, which reads every broadcast vector into this
worker (the protocol: stream/items/__init__.py).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.items.ledger import CanonicalVector, ItemDelta
from stream.kafka.fetch_wait import FetchWait, adapt_fetch_wait, partitions_behind
from stream.security import PLAINTEXT, KafkaSecurity

log = logging.getLogger(__name__)


def _vector_out(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def _vector_in(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def encode_deltas(deltas: Sequence[ItemDelta]) -> bytes:
    return orjson.dumps(
        [
            {
                "item_id": d.item_id,
                "source": d.source,
                "offset": d.offset,
                "delta": _vector_out(d.delta),
                "latest": _vector_out(d.latest),
                "before": None if d.before is None else _vector_out(d.before),
                "clicked_at": d.clicked_at,
                "model": d.model,
            }
            for d in deltas
        ]
    )


def decode_deltas(raw: bytes) -> list[ItemDelta]:
    """Raises ValueError on a record that is not ours."""
    try:
        return [
            ItemDelta(
                d["item_id"],
                d["source"],
                int(d["offset"]),
                _vector_in(d["delta"]),
                _vector_in(d["latest"]),
                d.get("clicked_at"),
                None if d.get("before") is None else _vector_in(d["before"]),
                str(d.get("model", "")),
            )
            for d in orjson.loads(raw)
        ]
    except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not an item-delta record: {exc!r}") from exc


def encode_vectors(entries: Iterable[CanonicalVector]) -> bytes:
    return orjson.dumps(
        [
            {
                "item_id": e.item_id,
                "vector": _vector_out(e.vector),
                "version": e.version,
                "applied": dict(e.applied),
                "clicked_at": e.clicked_at,
                "events": e.events,
                "model": e.model,
            }
            for e in entries
        ]
    )


def decode_vectors(raw: bytes) -> list[CanonicalVector]:
    """Raises ValueError on a record that is not ours."""
    try:
        return [
            CanonicalVector(
                e["item_id"],
                _vector_in(e["vector"]),
                int(e["version"]),
                dict(e["applied"]),
                e.get("clicked_at"),
                int(e.get("events", 0)),
                str(e.get("model", "")),
            )
            for e in orjson.loads(raw)
        ]
    except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not an item-vectors record: {exc!r}") from exc


class VectorFollower:
    """Reads every partition of the item-vectors topic from the beginning, with no
    consumer group, and hands each record's vectors to `on_vectors`.

    `caught_up` is set once the reader has reached the end of every partition as it was
    when reading started (or found the topic empty), so the worker can hold clicks until
    its index has been rebuilt. End offsets come from fetch responses' high watermarks:
    the embedded broker under-reports ListOffsets (docs/embedded-broker.md).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        partitions: int,
        on_vectors: Callable[[list[CanonicalVector]], None],
        *,
        fetch_max_wait_ms: int = 10,
        idle_caught_up_s: float = 1.0,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.security = security
        self.topic = topic
        self.partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self.on_vectors = on_vectors
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
            client_id="streamrec-vector-follower",
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
                        self._apply(record.value)
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
                    log.info("item vectors caught up: %d records read", self.records_read)
                    self.caught_up.set()
        finally:
            await consumer.stop()

    def _apply(self, value: bytes | None) -> None:
        self.records_read += 1
        try:
            vectors = decode_vectors(value or b"")
        except ValueError as exc:
            log.error("unreadable item-vectors record skipped: %s", exc)
            return
        self.on_vectors(vectors)

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
