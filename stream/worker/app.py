"""The worker's composition root: the Faust app, its topics and table, and the parts
that `create_worker` wires together.

    clicks --[validate: agents.take_clicks]--> clicks.dlq (bad records, with the reason)
           |--> BatchApplier --> recommendations, user table   (record already on the
           |                                                    user's owning partition)
           \\-> {app_id}-clicks-by-user --[recommend: agents.take_routed_clicks]
                  --> BatchApplier --> ...                      (any other record)

Each user's context lives in exactly one partition of the user table (UserTable, the
partition a record keyed by the user id lands on with the default partitioner). Clicks
produced that way are applied where they are read; the rest take one hop through the
by-user topic. Both topics and the table's changelog have the same partition count, so
Faust assigns partition p of all three to the same worker. Forwarding keeps the click's
record timestamp, so the latency histogram runs from the moment it was first produced.
BatchApplier's commit order is what applies each click once (stream/worker/applier.py).

Item vectors have one writer each, the worker owning the item id's partition of
`{app_id}-item-deltas` (the `own_items` agent, ItemOwner); every worker follows
`{app_id}-item-vectors` from the beginning and so converges on the owners' vectors, and
a fresh worker rebuilds its index from it before taking clicks (stream/items/).
The catalogue (the items topic) is read whole by every worker, for availability and
content, and by one `catalogue` agent per partition, which dead-letters bad records and
sends a new item's content vector to its owner (stream/worker/catalogue.py); clicks
wait until both the item vectors and the catalogue are read.
RedisRepair fills Redis on start and again whenever Redis lost its data
(stream/worker/redis_health.py). Housekeeping runs the rest: Redis flushes, lag,
memory, eviction of idle users, rebalances.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust

from model.base import ItemVectorModel, Recommender
from serving.faiss_index import FaissIndex
from serving.redis_store import RedisVectorStore
from stream.items.ledger import DeltaTracker
from stream.kafka.batch_send import ChangelogBatchWriter, KeyedBatchSender
from stream.kafka.follower import TopicFollower
from stream.kafka.internals import aiokafka_producer
from stream.kafka.topics import record_limit_bytes
from stream.kafka.transport import streamrec_app
from stream.metrics import WorkerMetrics
from stream.security import KafkaSecurity, redis_options
from stream.settings import Settings
from stream.worker import agents
from stream.worker.applier import BatchApplier
from stream.worker.catalogue import REFRESH_S, Catalogue, take_catalogue
from stream.worker.housekeeping import Housekeeping
from stream.worker.item_owner import ItemOwner
from stream.worker.pipeline import ClickProcessor
from stream.worker.publisher import VectorPublisher
from stream.worker.redis_health import RedisRepair
from stream.worker.retention import UserRetention, resident_bytes
from stream.worker.swap import ModelSwitch, Serving, follow_admin
from stream.worker.users import UserTable, assigned_partitions
from stream.worker.views import (
    RecentRecommendations,
    register_index_views,
    register_pull_view,
    register_views,
    web_application_options,
)

log = logging.getLogger(__name__)

# Seconds a Redis call may take before it counts as failed.
REDIS_TIMEOUT_S = 2.0


def make_app(settings: Settings, kafka_security: KafkaSecurity) -> faust.App:
    """The Faust app for `settings`, with the options the worker's correctness and
    start-up times depend on. Builds it only: nothing connects until it runs."""
    return streamrec_app(
        settings.app_id,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        # None (Faust's default, PLAINTEXT) unless security_protocol asks for more.
        broker_credentials=kafka_security.faust_credentials(),
        store="memory://",
        # With the in-memory store nothing persists across restarts, so this check can
        # only compare a standby's in-memory changelog offset with the changelog's end
        # offset, which the embedded broker under-reports (docs/embedded-broker.md): it crashed
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
        # Bad requests get a JSON 4xx, never a 500 or a traceback (issue 14).
        web_application_options=web_application_options(),
        # Short group timeouts: a join is held for about half the session timeout, so
        # the defaults make every start or failover wait 20-30 s (docs/embedded-broker.md).
        broker_session_timeout=10,
        broker_rebalance_timeout=6,
        broker_heartbeat_interval=1,
        # The same limit as the topics' max.message.bytes (stream/kafka/topics.py).
        producer_max_request_size=record_limit_bytes(settings.max_event_bytes),
    )


@dataclass(frozen=True)
class WorkerTopics:
    """The worker's topics and its user table, all with `settings.partitions`
    partitions so that partition p of each is assigned to the same worker."""

    clicks: Any
    dlq: Any
    by_user: Any
    recommendations: Any
    users: Any  # the user table (Faust's), changelogged
    item_deltas: Any
    item_vectors: Any
    items: Any  # the catalogue
    items_dlq: Any

    @classmethod
    def declare(cls, app: faust.App, settings: Settings) -> WorkerTopics:
        n = settings.partitions

        # Keys and values stay bytes end to end: decoded once, by stream/events.py.
        def topic(name: str) -> Any:
            return app.topic(name, key_type=bytes, value_type=bytes, partitions=n)

        return cls(
            clicks=topic(settings.clicks_topic),
            dlq=topic(settings.dlq_topic),
            by_user=topic(settings.by_user_topic),
            recommendations=topic(settings.recommendations_topic),
            # use_partitioner: a batch holds clicks of several partitions, so a write
            # cannot take its changelog partition from "the current event"; the key's
            # murmur2 partition is the user's owning partition anyway
            # (stream/worker/users.py: owning_partition).
            users=app.Table(
                "user_contexts",
                default=None,
                use_partitioner=True,
                key_type=bytes,
                value_type=bytes,
                partitions=n,
            ),
            item_deltas=topic(settings.item_deltas_topic),
            item_vectors=topic(settings.item_vectors_topic),
            items=topic(settings.items_topic),
            items_dlq=topic(settings.items_dlq_topic),
        )

    def recommendation_sender(self) -> KeyedBatchSender:
        """Sends a batch's recommendation events as one record batch per partition,
        partitioned by key as `Topic.send` would (the topic exists: the worker creates
        its topics before it starts)."""
        app = self.recommendations.app
        return KeyedBatchSender(
            functools.partial(aiokafka_producer, app), self.recommendations.get_topic_name()
        )


@dataclass(frozen=True)
class Worker:
    """One worker process's Faust app, wired and ready to run (stream/worker/process.py)."""

    app: faust.App


def _user_retention(settings: Settings, app: faust.App, metrics: WorkerMetrics) -> UserRetention:
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
    return retention


def _bound(agent: Callable[..., Awaitable[None]], **dependencies: Any) -> Callable[[Any], Any]:
    """`agent` with its dependencies bound, keeping its name and docstring (what Faust
    shows for it), as faust's examples/bound_agent.py registers agents."""
    return functools.update_wrapper(functools.partial(agent, **dependencies), agent)


def _pull_answer(processor: ClickProcessor, users: UserTable, user_id: str, k: int) -> bytes:
    """The pull API's answer for `user_id` as they stand now, in-flight record included."""
    return processor.answer(user_id, users.current_record(user_id.encode()), k).to_json()


def _install_model_switch(
    app: Any,
    settings: Settings,
    security: KafkaSecurity,
    processor: ClickProcessor,
    items: ItemOwner,
    applier: BatchApplier,
    metrics: WorkerMetrics,
    index: FaissIndex,
    catalogue: Catalogue,
) -> ModelSwitch:
    """Live checkpoint swaps from the admin topic (stream/worker/swap.py)."""
    background: set[asyncio.Task[int]] = set()

    def install(serving: Serving) -> None:
        old = processor.recommender
        processor.swap(serving.model)
        catalogue.feed(serving.model)
        vector_model = serving.model if isinstance(serving.model, ItemVectorModel) else None
        items.swap(vector_model, serving.index, processor.vector_version)
        applier.index = serving.index
        metrics.model_info.remove(old.name, old.version)
        metrics.model_info.labels(model=serving.model.name, version=serving.model.version).set(1)
        if vector_model is not None:
            task = asyncio.ensure_future(items.write_swapped_items())
            background.add(task)
            task.add_done_callback(background.discard)

    switch = ModelSwitch(
        Serving(None, processor.recommender, index),
        install,
        dim=settings.dim,
        experiment=processor.experiment is not None,
    )

    async def follow_model_commands() -> None:
        await follow_admin(
            settings.bootstrap_servers,
            settings.admin_topic,
            switch,
            client_options=security.client_options(),
        )

    app.task(follow_model_commands)
    app.task(switch.run)
    return switch


def _install_catalogue(
    app: Any,
    settings: Settings,
    security: KafkaSecurity,
    topics: WorkerTopics,
    processor: ClickProcessor,
    items: ItemOwner,
    metrics: WorkerMetrics,
    batches: agents.Batches,
) -> tuple[Catalogue, agents.Ready]:
    """The catalogue's follower and agent (stream/worker/catalogue.py); returns the
    catalogue and what clicks wait for: the item vectors and the catalogue read."""
    catalogue = Catalogue(
        processor,
        items,
        metrics,
        max_event_bytes=settings.max_event_bytes,
        embedding_dim=settings.item_embedding_dim,
    )
    follower = TopicFollower(
        settings.bootstrap_servers,
        settings.items_topic,
        settings.partitions,
        catalogue.take_record,
        what="catalogue",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        security=security,
    )
    app.task(follower.run)
    app.timer(interval=REFRESH_S)(catalogue.refresh_now)

    async def ready() -> None:
        await items.caught_up.wait()
        await follower.caught_up.wait()

    app.agent(topics.items, name="catalogue")(
        _bound(
            take_catalogue,
            batches=batches,
            ready=items.caught_up.wait,
            catalogue=catalogue,
            dlq=topics.items_dlq,
        )
    )
    return catalogue, ready


def create_worker(
    settings: Settings,
    recommender: Recommender,
    index: FaissIndex,
) -> Worker:
    """Build the Faust app for `settings`. `recommender` must search through `index`
    when it has vectors (the torch model); baselines ignore it. Connects to nothing:
    Redis and Kafka are reached once the app runs."""
    kafka_security = KafkaSecurity.from_settings(settings)
    app = make_app(settings, kafka_security)
    topics = WorkerTopics.declare(app, settings)
    metrics = WorkerMetrics()
    metrics.model_info.labels(model=recommender.name, version=recommender.version).set(1)
    store = RedisVectorStore.from_url(
        settings.redis_url,
        prefix=settings.redis_prefix,
        user_ttl_s=settings.user_ttl_s,
        # A Redis that stops answering (SIGSTOP, a partition) fails a write instead
        # of holding every flush behind it; the writes wait, backing off.
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        **redis_options(settings),
    )
    publisher = VectorPublisher(store, metrics)
    vector_model = recommender if isinstance(recommender, ItemVectorModel) else None
    tracker = DeltaTracker()
    processor = ClickProcessor(
        recommender,
        publisher,
        metrics,
        top_k=settings.top_k,
        exclude=settings.exclude,
        history_max=settings.history_max,
        dedup_window=settings.dedup_window,
        batched=settings.model_step == "batch",
        tracker=tracker if vector_model is not None else None,
    )
    items = ItemOwner(
        settings,
        kafka_security,
        index=index,
        vector_model=vector_model,
        tracker=tracker,
        publisher=publisher,
        store=store,
        metrics=metrics,
        deltas_topic=topics.item_deltas,
        vectors_topic=topics.item_vectors,
        model_version=processor.vector_version,
    )
    users = UserTable(
        topics.users,
        _user_retention(settings, app, metrics),
        metrics,
        partitions=settings.partitions,
        owned_partitions=functools.partial(assigned_partitions, app, settings.by_user_topic),
        on_evicted=lambda keys: publisher.forget_users(key.decode() for key in keys),
        write_many=ChangelogBatchWriter(topics.users, functools.partial(aiokafka_producer, app)),
    )
    recent = RecentRecommendations()
    applier = BatchApplier(
        processor,
        users,
        send_deltas=items.send_deltas,
        send_recommendations=topics.recommendation_sender().send,
        metrics=metrics,
        index=index,
        recent=recent,
    )

    batches = functools.partial(
        agents.in_order_batches,
        app=app,
        metrics=metrics,
        size=settings.batch_size,
        gather_s=settings.batch_wait_ms / 1000,
        depth=settings.pipeline_batches,
    )
    catalogue, ready = _install_catalogue(
        app, settings, kafka_security, topics, processor, items, metrics, batches
    )
    # The agent names name consumer and changelog state: they stay as they were.
    app.agent(topics.clicks, name="validate")(
        _bound(
            agents.take_clicks,
            batches=batches,
            ready=ready,
            applier=applier,
            dlq=topics.dlq,
            by_user=topics.by_user,
            metrics=metrics,
            partitions=settings.partitions,
            max_event_bytes=settings.max_event_bytes,
        )
    )
    app.agent(topics.by_user, name="recommend")(
        _bound(
            agents.take_routed_clicks,
            batches=batches,
            ready=ready,
            applier=applier,
        )
    )
    app.agent(topics.item_deltas, name="own_items")(
        _bound(
            agents.own_item_deltas,
            batches=batches,
            items=items,
        )
    )
    app.task(items.follow_item_vectors)
    repair = RedisRepair(
        store,
        publisher.link,
        metrics,
        write_items=items.write_items,
        write_users=publisher.write_all_users,
        pending=lambda: publisher.pending,
    )

    async def repair_redis() -> None:
        # Once the item vectors are caught up, so the first write holds the live ones.
        await repair.run(ready=items.caught_up.wait)

    app.task(repair_redis)
    Housekeeping(
        app, settings, users=users, items=items, publisher=publisher, metrics=metrics
    ).install()

    register_views(app, metrics, recent)
    register_pull_view(
        app, topics.users, functools.partial(_pull_answer, processor, users), settings.top_k
    )
    register_index_views(app, lambda: items.index, items.canonical_version)
    _install_model_switch(
        app, settings, kafka_security, processor, items, applier, metrics, index, catalogue
    )
    return Worker(app)


__all__ = ["Worker", "WorkerTopics", "create_worker", "make_app"]
