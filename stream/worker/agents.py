"""The worker's three Faust agents, as module-level functions with their dependencies
bound by `functools.partial` where the app registers them (stream/worker/app.py):

    clicks --[take_clicks]--> clicks.dlq (bad records, with the reason in headers)
           |--> BatchApplier   (record already on the user's owning partition)
           \\-> {app_id}-clicks-by-user --[take_routed_clicks]--> BatchApplier
    {app_id}-item-deltas --[own_item_deltas]--> ItemOwner.own_deltas

Each consumes its stream through `in_order_batches`, which hands over each
partition's records in order and acknowledges a batch only once it is applied.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from stream.events import Click, Rejected, dead_letter, decode_click
from stream.kafka.take import take_ready
from stream.metrics import WorkerMetrics, observe_many
from stream.worker.acks import InOrderAcks, Taken
from stream.worker.applier import BatchApplier
from stream.worker.item_owner import ItemOwner
from stream.worker.pipeline import Accepted
from stream.worker.users import owning_partition

log = logging.getLogger(__name__)

# An agent's stream in, batches of its events out (`in_order_batches` with the app's
# settings bound).
Batches = Callable[[Any], AsyncIterator[Taken]]
# Returns once the worker may apply clicks (its item vectors and catalogue read).
Ready = Callable[[], Awaitable[Any]]


async def in_order_batches(
    stream: Any,
    *,
    app: Any,
    metrics: WorkerMetrics,
    size: int,
    gather_s: float,
    depth: int = 1,
) -> AsyncIterator[Taken]:
    """Batches of at most `size` events, handed over as soon as nothing more is ready
    (or `gather_s` after a batch began gathering: stream/kafka/take.py), each
    acknowledged only after the loop body that got it has finished, or, if the body
    called `Taken.ack_when`, once that finishing work has resolved; in order either way
    (stream/worker/acks.py). The next batch is handed over only while fewer than
    `depth` are outstanding. `take_events` acknowledges a batch in a `finally`, so a
    worker stopped in the middle of one would commit clicks it never applied (found by
    tests/integration/test_rebalance.py)."""
    acks = InOrderAcks(stream, depth)
    async for events in take_ready(stream, size, gather_s):
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
        taken = Taken(current)
        yield taken
        await acks.add(taken)
        # Before the next batch is taken, so that what arrives meanwhile joins it.
        await acks.room()


def _with_event_id(click: Click, event_id: str) -> Click:
    return click if click.event_id == event_id else dataclasses.replace(click, event_id=event_id)


async def take_clicks(
    stream: Any,
    *,
    batches: Batches,
    ready: Ready,
    applier: BatchApplier,
    dlq: Any,
    by_user: Any,
    metrics: WorkerMetrics,
    partitions: int,
    max_event_bytes: int,
) -> None:
    """Registered as the "validate" agent on the clicks topic. Decodes each record;
    dead-letters a bad one with the reason; applies a click already on its user's
    owning partition; forwards any other to the by-user topic, keyed by user id and
    keeping its record timestamp (the latency histogram runs from the first produce)."""
    # Clicks wait until the index holds the live item vectors (a fresh worker
    # rebuilds them from the item-vectors topic first) and the catalogue is read.
    await ready()
    async for taken in batches(stream):
        events = taken.events
        accepted: list[Accepted] = []
        metrics.events_consumed.inc(len(events))
        started = time.perf_counter()
        for event in events:
            message = event.message
            click = decode_click(
                event.value,
                record_timestamp=message.timestamp,
                max_bytes=max_event_bytes,
            )
            if isinstance(click, Rejected):
                metrics.events_rejected.labels(reason=click.reason).inc()
                # Cut to max_event_bytes: a 20 MB value would exceed the producer's
                # request limit, and the failed send would crash this agent.
                value, headers = dead_letter(event.value, click, max_bytes=max_event_bytes)
                await dlq.send(key=event.key, value=value, headers=headers)
                continue
            # A click without an event_id is named by its record's position, so a
            # redelivery of the same record after a crash is still recognised.
            event_id = click.event_id or f"{message.topic}:{message.partition}:{message.offset}"
            user_key = click.user_id.encode()
            if message.partition == owning_partition(user_key, partitions):
                # Keyed by user with the default partitioner: this record already
                # sits where the user's state lives, so apply it here, no hop.
                accepted.append(
                    Accepted(
                        click,
                        user_key,
                        event_id,
                        message.timestamp,
                        f"c{message.partition}",
                        message.offset,
                    )
                )
                continue
            metrics.events_rerouted.inc()
            await by_user.send(
                key=user_key,
                value=_with_event_id(click, event_id).to_json(),
                timestamp=message.timestamp,  # latency runs from the original click
            )
        # Per event, averaged over the batch; includes routing and any dead-lettering.
        observe_many(
            metrics.stage_seconds.labels(stage="decode"),
            (time.perf_counter() - started) / len(events),
            len(events),
        )
        taken.ack_when(await applier.begin(accepted))


async def take_routed_clicks(
    stream: Any, *, batches: Batches, ready: Ready, applier: BatchApplier
) -> None:
    """Registered as the "recommend" agent on the by-user topic: applies the clicks
    `take_clicks` forwarded, each now on its user's owning partition."""
    await ready()
    async for taken in batches(stream):
        accepted: list[Accepted] = []
        for event in taken.events:
            message = event.message
            click = decode_click(event.value, record_timestamp=time.time(), max_bytes=1 << 30)
            if isinstance(click, Rejected):  # only our own take_clicks writes here
                log.error("unreadable routed click dropped: %s", click.detail)
                continue
            accepted.append(
                Accepted(
                    click,
                    event.key,
                    click.event_id or "",
                    message.timestamp,
                    f"u{message.partition}",
                    message.offset,
                )
            )
        taken.ack_when(await applier.begin(accepted))


async def own_item_deltas(stream: Any, *, batches: Batches, items: ItemOwner) -> None:
    """Registered as the "own_items" agent on the item-deltas topic: the owner of an
    item id's partition applies each delta once, writes Redis and tells every worker
    the new vector."""
    async for taken in batches(stream):
        for event in taken.events:
            await items.own_deltas(event.message.partition, event.value)


__all__ = [
    "Batches",
    "Ready",
    "in_order_batches",
    "own_item_deltas",
    "take_clicks",
    "take_routed_clicks",
]
