"""What a worker does besides applying records: flushing vectors to Redis (and
repairing a Redis that lost them, stream/worker/redis_health.py), re-seeking
stalled partitions, reporting its state (lag, memory, users) and evicting idle users,
following rebalances, and answering the SIGUSR1 dump (stream/worker/diagnostics.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from stream.kafka.internals import channel_queues, pressure_drop_callbacks, read_offsets
from stream.metrics import WorkerMetrics
from stream.settings import Settings
from stream.worker import diagnostics
from stream.worker.item_owner import ItemOwner
from stream.worker.publisher import VectorPublisher
from stream.worker.retention import resident_bytes
from stream.worker.users import UserTable, owning_partition

log = logging.getLogger(__name__)


class Housekeeping:
    """The worker's tasks, timers and rebalance handlers; `install` registers them.

    Every method runs on the worker's event loop and none raises on a failure it can
    count instead (a Redis flush that fails is retried by the next one).
    """

    def __init__(
        self,
        app: Any,
        settings: Settings,
        *,
        users: UserTable,
        items: ItemOwner,
        publisher: VectorPublisher,
        metrics: WorkerMetrics,
    ) -> None:
        self.app = app
        self.settings = settings
        self.users = users
        self.items = items
        self.publisher = publisher
        self.metrics = metrics
        # The (topic, partition) series of streamrec_consumer_lag set by the last report.
        self._lag_series: set[tuple[str, str]] = set()

    def install(self) -> None:
        """Register the tasks, timers, rebalance handlers and diagnostic snapshots with
        the app. Call once."""
        app = self.app
        app.task(self.flush_loop)
        app.timer(interval=1.0)(self.reseek_stalled)
        app.timer(interval=5.0)(self.report_state)
        app.on_partitions_assigned.connect(self.on_assigned)
        app.on_rebalance_complete.connect(self.on_rebalanced)
        diagnostics.register_state("consumer", app.consumer.diagnostic_state)
        diagnostics.register_state("flow", self.flow_state)

    async def flush_loop(self) -> None:
        # A loop, not an @app.timer: a flush awaits Redis while clicks are processed
        # in between, and Faust would log every such flush as overlapping.
        while True:
            await asyncio.sleep(self.settings.vector_flush_ms / 1000)
            await self.publisher.flush()  # never raises: failures are counted and retried

    async def reseek_stalled(self) -> None:
        # Skipped records whose seek back was undone (stream/kafka/record_order.py).
        await self.app.consumer.reseek_stalled()

    async def report_state(self) -> None:
        """Resident memory (lowering the user cap past STREAMREC_MEMORY_CAP_MB), idle
        users evicted even when no clicks arrive, users held and consumer lag."""
        metrics, retention = self.metrics, self.users.retention
        resident = resident_bytes()
        if resident is not None:
            metrics.resident_memory.set(resident)
        if retention.note_resident(resident):
            log.warning(
                "resident memory %.0f MB is past STREAMREC_MEMORY_CAP_MB=%d: keeping at most "
                "%d users from now on",
                (resident or 0) / 2**20,
                self.settings.memory_cap_mb,
                retention.cap,
            )
            metrics.user_cap.set(retention.cap)
        await self.users.evict_users()
        metrics.users_in_state.set(len(self.users))
        self._report_lag()

    @property
    def _lag_topics(self) -> tuple[str, ...]:
        """The agents' input topics whose lag is reported: clicks, clicks re-keyed by
        user, and item deltas (their lag is what the item vectors' freshness owes)."""
        settings = self.settings
        return (settings.clicks_topic, settings.by_user_topic, settings.item_deltas_topic)

    def _report_lag(self) -> None:
        """Set each assigned input partition's lag, and drop the series of partitions no
        longer assigned: a revoked partition's last lag would otherwise stay on /metrics
        (and on the dashboard's sum) until the worker restarts."""
        consumer = self.app.consumer
        offsets = read_offsets(consumer)
        gauge = self.metrics.consumer_lag
        reported: set[tuple[str, str]] = set()
        for tp in consumer.assignment():
            if tp.topic not in self._lag_topics:
                continue
            # The high watermark of fetch responses, not ListOffsets: right on Apache
            # Kafka, and not the figure the embedded broker under-reports (docs/embedded-broker.md).
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            read = offsets.get(tp)
            next_offset = 0 if read is None else read + 1
            series = (tp.topic, str(tp.partition))
            gauge.labels(*series).set(max(0, highwater - next_offset))
            reported.add(series)
        for gone in self._lag_series - reported:
            gauge.remove(*gone)
        self._lag_series = reported

    async def on_assigned(self, app: Any, assigned: Any, **kwargs: Any) -> None:
        settings = self.settings
        self.items.took_over(
            tp.partition for tp in assigned if tp.topic == settings.item_deltas_topic
        )
        self.metrics.assigned_partitions.set(
            sum(1 for tp in assigned if tp.topic == settings.by_user_topic)
        )
        self.metrics.ready.set(0)

    async def on_rebalanced(self, app: Any, **kwargs: Any) -> None:
        self.users.adopt_recovered_users()
        # The user vectors kept for a Redis repair: only of users this worker owns now.
        owned, partitions = self.users.owned_partitions(), self.settings.partitions
        self.publisher.keep_users(lambda user: owning_partition(user.encode(), partitions) in owned)
        self.metrics.ready.set(1)

    def flow_state(self) -> dict[str, Any]:
        """What may hold records back between the fetcher and the agents."""
        app = self.app
        queues = {}
        for channel, queue in channel_queues(app):
            queues[repr(channel)[:120]] = {
                "size": queue.qsize(),
                "maxsize": queue.maxsize,
                "pressure_drop_callbacks": pressure_drop_callbacks(queue),
            }
        return {
            "flow_control_active": app.flow_control.is_active(),
            "in_recovery": app.in_recovery,
            "rebalancing": app.rebalancing,
            "generation": app.consumer_generation_id,
            "item_vectors_caught_up": self.items.caught_up.is_set(),
            "users_in_flight": len(self.users.in_flight),
            "producer_buffer": app.producer.buffer.size,
            "queues": queues,
        }


__all__ = ["Housekeeping"]
