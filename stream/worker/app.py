"""The Faust application: topics, the user table, the two agents and the web views.

    clicks --[validate]--> clicks.dlq (bad records, with the reason in headers)
           |--[apply]--> recommendations, user table      (record already on the
           |                                               user's owning partition)
           \\-> {app_id}-clicks-by-user --[recommend]--[apply]--> ... (any other record)

Each user's context lives in exactly one partition of the user table: the partition a
record keyed by the user id lands on with the default (murmur2) partitioner. Clicks
produced that way are applied where they are read; the rest take one hop through the
by-user topic. Both topics and the table's changelog have the same partition count, so
Faust assigns partition p of all three to the same worker. Forwarding keeps the click's
record timestamp, so the latency histogram runs from the moment it was first produced.

Item vectors have one writer each, the worker owning the item id's partition of
`{app_id}-item-deltas` (the `own_items` agent); every worker follows
`{app_id}-item-vectors` from the beginning and so converges on the owners' vectors, and
a fresh worker rebuilds its index (and Redis) from it before taking clicks
(stream/items/sync.py, stream/items/ledger.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import faust
import numpy as np
from kafka.partitioner.default import murmur2

from model.base import ItemVectorModel, Recommender
from serving.faiss_index import FaissIndex
from serving.redis_store import RedisVectorStore
from stream.events import Click, Recommendation, Rejected, dead_letter, decode_click
from stream.items.ledger import CanonicalVector, DeltaTracker, ItemDelta, ItemLedger
from stream.items.sync import VectorFollower, decode_deltas, encode_deltas, encode_vectors
from stream.kafka.transport import streamrec_app
from stream.metrics import WorkerMetrics
from stream.security import KafkaSecurity, redis_options
from stream.settings import Settings
from stream.worker import diagnostics
from stream.worker.pipeline import ClickProcessor, UserRecord
from stream.worker.publisher import VectorPublisher
from stream.worker.retention import UserRetention, resident_bytes
from stream.worker.views import (
    RecentRecommendations,
    register_index_views,
    register_pull_view,
    register_views,
)

log = logging.getLogger(__name__)
# Keys and values stay bytes end to end: we decode once, ourselves (stream/events.py).
RAW = {"key_type": bytes, "value_type": bytes}


@dataclass
class Worker:
    """Everything one worker process holds, so tests and views can reach it."""

    app: faust.App
    settings: Settings
    metrics: WorkerMetrics
    index: FaissIndex
    recommender: Recommender
    processor: ClickProcessor
    ledger: ItemLedger
    follower: VectorFollower


def create_worker(
    settings: Settings,
    recommender: Recommender,
    index: FaissIndex,
) -> Worker:
    """Build the Faust app for `settings`. `recommender` must search through `index`
    when it has vectors (the torch model); baselines ignore it."""
    kafka_security = KafkaSecurity.from_settings(settings)
    app = streamrec_app(
        settings.app_id,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        # None (Faust's default, PLAINTEXT) unless security_protocol asks for more.
        broker_credentials=kafka_security.faust_credentials(),
        store="memory://",
        # With the in-memory store nothing persists across restarts, so this check can
        # only compare a standby's in-memory changelog offset with the changelog's end
        # offset, which the embedded broker under-reports (FIELD-NOTES): it crashed
        # healthy workers during `make chaos` rebalances ("persisted offset ... is
        # higher than the last offset in that topic (2758 > 2757)").
        recovery_consistency_check=False,
        key_serializer="raw",
        value_serializer="raw",
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        datadir=f"{settings.data_dir}/{settings.app_id}",
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        # Table contents are user state: never served over HTTP.
        web_tables_enabled=False,
        # Short group timeouts: a join is held for about half the session timeout, so
        # the defaults make every start or failover wait 20-30 s (FIELD-NOTES).
        broker_session_timeout=10,
        broker_rebalance_timeout=6,
        broker_heartbeat_interval=1,
        # What this worker produces is at most about max_event_bytes (a forwarded click,
        # a dead letter cut to that size) plus headers; Faust's default is 1,000,000.
        producer_max_request_size=max(1_000_000, settings.max_event_bytes + 65_536),
    )
    metrics = WorkerMetrics()
    metrics.model_info.labels(model=recommender.name, version=recommender.version).set(1)
    store = RedisVectorStore.from_url(
        settings.redis_url, prefix=settings.redis_prefix, user_ttl_s=settings.user_ttl_s,
        **redis_options(settings),
    )
    publisher = VectorPublisher(store, metrics)
    recent = RecentRecommendations()
    vector_model = recommender if isinstance(recommender, ItemVectorModel) else None
    tracker = DeltaTracker()
    ledger = ItemLedger()
    unsynced: set[int] = set()  # item-delta partitions owned but not yet caught up on
    # Evict only users whose clicks Faust has surely committed: three commit intervals
    # after their last one was applied (why: stream/worker/retention.py).
    retention = UserRetention(
        settings.max_users,
        settings.user_idle_s,
        safe_after_s=3 * float(app.conf.broker_commit_interval),
        memory_cap_bytes=settings.memory_cap_mb * 1024 * 1024,
    )
    metrics.user_cap.set(retention.cap)
    if settings.memory_cap_mb and resident_bytes() is None:
        log.warning("no /proc/self/statm here: STREAMREC_MEMORY_CAP_MB is not enforced")
    processor = ClickProcessor(
        recommender,
        publisher,
        metrics,
        top_k=settings.top_k,
        exclude=settings.exclude,
        dedup_window=settings.dedup_window,
        tracker=tracker if vector_model is not None else None,
    )

    def take_canonical(entries: list[CanonicalVector]) -> None:
        """A record of the item owners' vectors: keep them, and copy into the model and
        the index each one that already includes this worker's own changes."""
        ids, vectors = [], []
        for entry in entries:
            ledger.observe(entry)
            current = ledger.get(entry.item_id)
            if current is not None and current.version == entry.version and (
                tracker.may_overwrite(entry)
            ):
                ids.append(entry.item_id)
                vectors.append(entry.vector)
        if ids and vector_model is not None:
            vector_model.set_item_vectors(ids, np.stack(vectors))
            index.upsert(ids, np.stack(vectors))
            metrics.index_items.set(len(index))

    follower = VectorFollower(
        settings.bootstrap_servers,
        settings.item_vectors_topic,
        settings.partitions,
        take_canonical,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        security=kafka_security,
    )

    partitions = {"partitions": settings.partitions}
    clicks = app.topic(settings.clicks_topic, **RAW, **partitions)
    dlq = app.topic(settings.dlq_topic, **RAW, **partitions)
    by_user = app.topic(settings.by_user_topic, **RAW, **partitions)
    recommendations = app.topic(settings.recommendations_topic, **RAW, **partitions)
    # use_partitioner: a batch holds clicks of several partitions, so a write cannot
    # take its changelog partition from "the current event"; the key's murmur2
    # partition is the user's owning partition anyway (see owning_partition).
    users = app.Table(
        "user_contexts", default=None, use_partitioner=True, **RAW, **partitions
    )
    item_deltas = app.topic(settings.item_deltas_topic, **RAW, **partitions)
    item_vectors = app.topic(settings.item_vectors_topic, **RAW, **partitions)

    def owning_partition(key: bytes) -> int:
        # The producer default (murmur2, as Faust/aiokafka, kafka-python and the Java
        # client use): where a record keyed by this user lands, and where its state
        # lives; for an item id, the partition whose owner writes its vector.
        return (murmur2(key) & 0x7FFFFFFF) % settings.partitions

    async def apply_batch(batch: list[Accepted]) -> None:
        """Apply accepted clicks in order, make their item-vector deltas durable, then
        write the users' records and emit the recommendations.

        That order is what makes a replay after a crash apply each click once: a click
        whose user record reached the changelog has its deltas in Kafka too, so the
        replay skips it by event id; a click whose record did not is applied again, and
        the item owners skip its deltas by source offset. Faust flushes everything sent
        before it commits an offset, so a committed click is never replayed at all.
        """
        records: dict[bytes, UserRecord] = {}
        emitted: list[tuple[Accepted, Recommendation]] = []
        for accepted in batch:
            record = current_record(accepted.user_key) or processor.new_record()
            outcome = processor.process(
                accepted.click, record, accepted.event_id, accepted.clicked_at,
                source=accepted.source, offset=accepted.offset,
            )
            if outcome.recommendation is not None:
                records[accepted.user_key] = in_flight[accepted.user_key] = outcome.record
                emitted.append((accepted, outcome.recommendation))
        if not emitted:
            return
        # Deltas and recommendations first, the user records after both are durable:
        # a replayed click then either finds its record (effects and output already
        # in Kafka) or is applied again (its recommendation may repeat; its deltas are
        # skipped by their owners).
        started = time.perf_counter()
        pending = send_deltas()
        for accepted, recommendation in emitted:
            pending.append(
                await recommendations.send(key=accepted.user_key, value=recommendation.to_json())
            )
        await asyncio.gather(*pending)
        for user_key, record in records.items():
            # Only the newest record of a user is written: if the other agent applied
            # a later click meanwhile, its record includes this one's and it writes.
            if in_flight.get(user_key) is record:
                users[user_key] = record.to_bytes()
                del in_flight[user_key]
                retention.touch(user_key, record.context.last_timestamp)
        per_event = (time.perf_counter() - started) / len(emitted)
        now = time.time()
        for accepted, recommendation in emitted:
            metrics.stage_seconds.labels(stage="produce").observe(per_event)
            metrics.recommendations_emitted.inc()
            recent.add(recommendation)
            metrics.click_to_recommendation.observe(max(0.0, now - accepted.clicked_at))
        metrics.index_items.set(len(index))
        evict_users()

    def owned_user_partitions() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment()
                if tp.topic == settings.by_user_topic}

    def evict_users() -> None:
        """Delete from the table the users `retention` says are due: each deletion
        writes a changelog tombstone, so a restarted worker does not bring them back.
        Only users of partitions this worker owns (the table also holds standbys, whose
        owner evicts them); never one with a record still in flight."""
        owned = owned_user_partitions()
        evicted = 0
        for eviction in retention.due(lambda key: owning_partition(key) in owned, in_flight):
            if eviction.key in users:
                del users[eviction.key]
                evicted += 1
            metrics.users_evicted.labels(reason=eviction.reason).inc()
        if evicted:
            metrics.users_in_state.set(len(users))

    # Records applied but not yet written to the table: the other agent (a user's
    # clicks can arrive both in place and through the by-user topic) and the pull API
    # must see them while a batch waits for its deltas to be durable.
    in_flight: dict[bytes, UserRecord] = {}

    def current_record(user_key: bytes) -> UserRecord | None:
        record = in_flight.get(user_key)
        if record is not None:
            return record
        raw = users.get(user_key)
        return UserRecord.from_bytes(raw) if raw else None

    def send_deltas() -> list[Any]:
        """Queue every pending item-vector delta to its item's owner, one record per
        owning partition; returns the futures that resolve once the broker has them."""
        by_partition: dict[int, list[ItemDelta]] = {}
        for delta in tracker.drain():
            by_partition.setdefault(owning_partition(delta.item_id.encode()), []).append(delta)
        return [
            item_deltas.send_soon(value=encode_deltas(group), partition=partition)
            for partition, group in sorted(by_partition.items())
        ]

    async def batches(stream: Any) -> Any:
        """Batches of events, each acknowledged only after the loop body that got it
        has finished. `take_events` acknowledges a batch in a `finally`, so a worker
        stopped in the middle of one would commit clicks it never applied (found by
        tests/integration/test_rebalance.py)."""
        async for events in stream.noack_take(
            settings.batch_size, within=settings.batch_wait_ms / 1000
        ):
            # Events fetched before a rebalance may still sit in the stream's buffer
            # after it. Their partition may now be another worker's, and acking them
            # would corrupt Faust's commit tracking (the offsets it keeps per
            # partition are reset by the revocation), committing past clicks that
            # were never applied. They are neither applied nor acked here: the
            # partition's owner reads them again from the committed offset.
            generation = app.consumer_generation_id
            current = []
            for event in events:
                if event.message.generation_id not in (None, generation):
                    continue
                # Each partition's records in order, none skipped (stream/kafka/record_order.py).
                if await app.consumer.admit(event.message):
                    current.append(event)
            if len(current) < len(events):
                metrics.stale_events_skipped.inc(len(events) - len(current))
            if not current:
                continue
            yield current
            for event in current:
                await stream.ack(event)

    @app.agent(clicks, name="validate")
    async def validate(stream: Any) -> None:
        # Clicks wait until the index holds the live item vectors (a fresh worker
        # rebuilds them from the item-vectors topic first).
        await follower.caught_up.wait()
        async for events in batches(stream):
            accepted: list[Accepted] = []
            for event in events:
                message = event.message
                started = time.perf_counter()
                metrics.events_consumed.inc()
                click = decode_click(
                    event.value,
                    record_timestamp=message.timestamp,
                    max_bytes=settings.max_event_bytes,
                )
                metrics.stage_seconds.labels(stage="decode").observe(
                    time.perf_counter() - started
                )
                if isinstance(click, Rejected):
                    metrics.events_rejected.labels(reason=click.reason).inc()
                    # Cut to max_event_bytes: a 20 MB value would exceed the producer's
                    # request limit, and the failed send would crash this agent.
                    value, headers = dead_letter(
                        event.value, click, max_bytes=settings.max_event_bytes
                    )
                    await dlq.send(key=event.key, value=value, headers=headers)
                    continue
                # A click without an event_id is named by its record's position, so a
                # redelivery of the same record after a crash is still recognised.
                event_id = click.event_id or f"{message.topic}:{message.partition}:{message.offset}"
                user_key = click.user_id.encode()
                if message.partition == owning_partition(user_key):
                    # Keyed by user with the default partitioner: this record already
                    # sits where the user's state lives, so apply it here, no hop.
                    accepted.append(Accepted(
                        click, user_key, event_id, message.timestamp,
                        f"c{message.partition}", message.offset,
                    ))
                    continue
                metrics.events_rerouted.inc()
                await by_user.send(
                    key=user_key,
                    value=_with_event_id(click, event_id).to_json(),
                    timestamp=message.timestamp,  # latency runs from the original click
                )
            await apply_batch(accepted)

    @app.agent(by_user, name="recommend")
    async def recommend(stream: Any) -> None:
        await follower.caught_up.wait()
        async for events in batches(stream):
            accepted: list[Accepted] = []
            for event in events:
                message = event.message
                click = decode_click(event.value, record_timestamp=time.time(), max_bytes=1 << 30)
                if isinstance(click, Rejected):  # only our own validate agent writes here
                    log.error("unreadable routed click dropped: %s", click.detail)
                    continue
                accepted.append(Accepted(
                    click, event.key, click.event_id or "", message.timestamp,
                    f"u{message.partition}", message.offset,
                ))
            await apply_batch(accepted)

    @app.agent(item_deltas, name="own_items")
    async def own_items(stream: Any) -> None:
        """The owner of an item id's partition: applies each delta once, writes Redis
        and tells every worker the new vector."""
        async for events in batches(stream):
            for event in events:
                await own_deltas(event)

    async def own_deltas(event: Any) -> None:
        partition = event.message.partition
        if partition in unsynced:
            # Newly owned: first read every vector the previous owner broadcast, so
            # its last changes are the base for ours (and its applied offsets stop
            # replayed deltas).
            await follower.sync({partition})
            unsynced.discard(partition)
        try:
            deltas = decode_deltas(event.value or b"")
        except ValueError as exc:  # only our own workers write here
            log.error("unreadable item-delta record dropped: %s", exc)
            return
        applied = [entry for d in deltas if (entry := ledger.apply(d)) is not None]
        if not applied:
            return
        publisher.submit_items(
            {e.item_id: e.vector for e in applied},
            {e.item_id: e.version for e in applied},
            {e.item_id: e.clicked_at for e in applied if e.clicked_at is not None},
        )
        await item_vectors.send(value=encode_vectors(applied), partition=partition)

    @app.task
    async def follow_item_vectors() -> None:
        await follower.run()

    @app.task
    async def rebuild_redis() -> None:
        """Redis is a copy: once caught up, write every vector this worker holds,
        compare-and-set, so an emptied Redis is whole again and a newer one is kept."""
        if vector_model is None:
            return
        await follower.caught_up.wait()
        written = await write_all_items(store, index, ledger)
        log.info("rebuilt Redis from the model and the item-vectors topic: %d written", written)

    @app.task
    async def flush_loop() -> None:
        # A loop, not an @app.timer: a flush awaits Redis while clicks are processed
        # in between, and Faust would log every such flush as overlapping.
        while True:
            await asyncio.sleep(settings.vector_flush_ms / 1000)
            await publisher.flush()  # never raises: failures are counted and retried

    @app.timer(interval=1.0)
    async def reseek_stalled() -> None:
        # Skipped records whose seek back was undone (stream/kafka/record_order.py).
        await app.consumer.reseek_stalled()

    @app.timer(interval=5.0)
    async def report_state() -> None:
        resident = resident_bytes()
        if resident is not None:
            metrics.resident_memory.set(resident)
        if retention.note_resident(resident):
            log.warning(
                "resident memory %.0f MB is past STREAMREC_MEMORY_CAP_MB=%d: keeping at most "
                "%d users from now on", (resident or 0) / 2**20, settings.memory_cap_mb,
                retention.cap,
            )
            metrics.user_cap.set(retention.cap)
        evict_users()  # idle users leave even when no clicks arrive
        metrics.users_in_state.set(len(users))
        consumer = app.consumer
        read_offsets = consumer._read_offset  # last offset handed to each stream
        for tp in consumer.assignment():
            if tp.topic not in (settings.clicks_topic, settings.by_user_topic):
                continue
            # The high watermark of fetch responses, not ListOffsets: right on Apache
            # Kafka, and not the figure the embedded broker under-reports (FIELD-NOTES).
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            read = read_offsets.get(tp)
            next_offset = 0 if read is None else read + 1
            metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                max(0, highwater - next_offset)
            )

    @app.on_partitions_assigned.connect
    async def on_assigned(app: Any, assigned: Any, **kwargs: Any) -> None:
        owned = {tp.partition for tp in assigned if tp.topic == settings.item_deltas_topic}
        unsynced.update(owned)
        metrics.assigned_partitions.set(
            sum(1 for tp in assigned if tp.topic == settings.by_user_topic)
        )
        metrics.ready.set(0)

    @app.on_rebalance_complete.connect
    async def on_rebalanced(app: Any, **kwargs: Any) -> None:
        adopt_recovered_users()
        metrics.ready.set(1)

    def adopt_recovered_users() -> None:
        """Track the users a (re)start recovered from the changelog, oldest last click
        first, so the cap and the idle rule cover them too."""
        owned = owned_user_partitions()
        found = [
            (UserRecord.last_timestamp_of(raw), key)
            for key, raw in users.items()
            if raw and key not in retention and owning_partition(key) in owned
        ]
        for event_time, key in sorted(found):
            retention.adopt(key, event_time)

    def flow_state() -> dict[str, Any]:
        """What may hold records back between the fetcher and the agents."""
        queues = {}
        for channel in list(app.topics._topics):
            queue = getattr(channel, "_queue", None)
            if queue is not None:
                queues[repr(channel)[:120]] = {
                    "size": queue.qsize(), "maxsize": queue.maxsize,
                    "pressure_drop_callbacks": len(queue._pending_pressure_drop_callbacks),
                }
        return {
            "flow_control_active": app.flow_control.is_active(),
            "in_recovery": app.in_recovery,
            "rebalancing": app.rebalancing,
            "generation": app.consumer_generation_id,
            "item_vectors_caught_up": follower.caught_up.is_set(),
            "users_in_flight": len(in_flight),
            "producer_buffer": app.producer.buffer.size,
            "queues": queues,
        }

    diagnostics.register_state("consumer", app.consumer.diagnostic_state)
    diagnostics.register_state("flow", flow_state)
    register_views(app, metrics, recent)

    def pull(user_id: str, k: int) -> bytes:
        return processor.answer(user_id, current_record(user_id.encode()), k).to_json()

    register_pull_view(app, users, pull, settings.top_k)

    def canonical_version(item_id: str) -> int | None:
        entry = ledger.get(item_id)
        return None if entry is None else entry.version

    register_index_views(app, index, canonical_version)

    return Worker(app, settings, metrics, index, recommender, processor, ledger, follower)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid click to apply, with where it was read (its deltas' idempotence key)."""

    click: Click
    user_key: bytes
    event_id: str
    clicked_at: float
    source: str
    offset: int


async def write_all_items(
    store: RedisVectorStore, index: FaissIndex, ledger: ItemLedger, chunk: int = 2000
) -> int:
    """Write every item vector in `index` to Redis in chunks, each with its canonical
    version (0 for one only a checkpoint gave): stale writes are refused by Redis."""
    written = 0
    ids = index.ids()
    for start in range(0, len(ids), chunk):
        batch = ids[start : start + chunk]
        versions = {}
        for item_id in batch:
            entry = ledger.get(item_id)
            versions[item_id] = entry.version if entry is not None else 0
        written += await store.put_vectors(
            items={i: index.vector(i) for i in batch},
            users={},
            version=0,
            item_versions=versions,
        )
        await asyncio.sleep(0)  # let clicks through between chunks
    return written


def _with_event_id(click: Click, event_id: str) -> Click:
    return click if click.event_id == event_id else dataclasses.replace(click, event_id=event_id)
