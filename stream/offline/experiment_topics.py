"""Reading the clicks and recommendations topics for `streamrec experiment report`.

Each topic is read from its beginning to the end offsets it had when the read started,
so a report on a live stream is of a fixed prefix and terminates. The embedded broker
under-reports end offsets (docs/embedded-broker.md: the base of the last record batch
plus one), so each partition's end is raised to the high watermark of its first fetch
response, which is right on both brokers.

What the report needs of each record, decoded here:
- a click: its user, its item and the event id the worker gave it (`click_event_id`);
  a record `decode_click` rejects got no recommendation and is skipped;
- a recommendation event: `Served`. An event that does not decode is counted and
  skipped, never fatal (`Unreadable`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from tqdm import tqdm

from stream.events import Rejected, decode_click
from stream.kafka.consumer import make_consumer
from stream.security import PLAINTEXT, KafkaSecurity

# The variant of an event without the field (a worker without STREAMREC_VARIANTS).
NO_VARIANT = ""
# A read that receives nothing for this long before reaching its end offsets fails.
STALL_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Served:
    """A recommendation event as the report uses it: the list a user was shown (item
    ids, best first), the arm that served it, the click that caused it and that
    click's event time."""

    user_id: str
    variant: str
    items: tuple[str, ...]
    source_event_id: str
    event_time: float


class ReadStalled(TimeoutError):
    """Nothing arrived for a while before a topic's end offsets were reached."""


class Unreadable(ValueError):
    """A recommendation record that breaks the event contract (stream/events.py)."""


def click_event_id(event_id: str | None, topic: str, partition: int, offset: int) -> str:
    """The event id the worker applies a click under, which its recommendation names
    as `source_event_id`: the click's own `event_id`, or else its record's position
    in the clicks topic, "topic:partition:offset" (stream/worker/agents.py,
    `take_clicks`: a redelivered record keeps its name)."""
    return event_id or f"{topic}:{partition}:{offset}"


def decode_served(raw: bytes | None) -> Served:
    """Parse a recommendation event value; raises Unreadable on a broken one.
    `variant` is optional: absent, it is NO_VARIANT."""
    try:
        data = orjson.loads(raw or b"")
        variant = data.get("variant", NO_VARIANT)
        served = Served(
            user_id=data["user_id"],
            variant=variant,
            items=tuple(item["item_id"] for item in data["items"]),
            source_event_id=data["source_event_id"],
            event_time=float(data["event_time"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise Unreadable(f"not a recommendation event: {exc!r}") from exc
    strings = (served.user_id, served.variant, served.source_event_id, *served.items)
    if not all(isinstance(s, str) for s in strings):
        raise Unreadable("user_id, variant, source_event_id and item ids must be strings")
    return served


def read_clicks(
    bootstrap_servers: str,
    topic: str,
    *,
    max_event_bytes: int,
    security: KafkaSecurity = PLAINTEXT,
    progress: bool = False,
) -> dict[tuple[str, str], str]:
    """(user id, event id) -> clicked item, for every valid click of `topic`. Event
    ids are per user, as the worker deduplicates them; the first click of a repeated
    id wins, as the worker applies it. Blocks until the read ends; holds every click."""
    clicked: dict[tuple[str, str], str] = {}
    for record in read_to_end(bootstrap_servers, topic, security=security, progress=progress):
        click = decode_click(
            record.value, record_timestamp=record.timestamp / 1000, max_bytes=max_event_bytes
        )
        if isinstance(click, Rejected):
            continue
        event_id = click_event_id(click.event_id, record.topic, record.partition, record.offset)
        clicked.setdefault((click.user_id, event_id), click.item_id)
    return clicked


def read_served(
    bootstrap_servers: str,
    topic: str,
    *,
    security: KafkaSecurity = PLAINTEXT,
    progress: bool = False,
) -> Iterator[Served | Unreadable]:
    """The recommendation events of `topic`, each user's in the order they were
    emitted (the topic is keyed by user, so a user's events share a partition), with
    an `Unreadable` in place of each broken one."""
    for record in read_to_end(bootstrap_servers, topic, security=security, progress=progress):
        try:
            yield decode_served(record.value)
        except Unreadable as exc:
            yield exc


def read_to_end(
    bootstrap_servers: str,
    topic: str,
    *,
    security: KafkaSecurity = PLAINTEXT,
    progress: bool = False,
    stall_timeout_s: float = STALL_TIMEOUT_S,
) -> Iterator[ConsumerRecord]:
    """Every record of `topic` from the beginning up to the end offsets at the start,
    each partition in order, with a progress bar on stderr if `progress`. Raises
    BrokerUnreachable without a broker, and ReadStalled when nothing arrives for
    `stall_timeout_s` before the end."""
    consumer = make_consumer(bootstrap_servers, [], security=security)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        starts = consumer.beginning_offsets(partitions)
        ends = consumer.end_offsets(partitions)
        pending = {tp for tp in partitions if ends[tp] > starts[tp]}
        corrected: set[TopicPartition] = set()
        if not pending:
            return
        consumer.assign(sorted(pending))
        consumer.seek_to_beginning()
        bar = tqdm(
            total=sum(ends[tp] - starts[tp] for tp in pending),
            unit="ev",
            desc=topic,
            disable=not progress,
            leave=False,
            mininterval=0.5,
        )
        last_record = time.monotonic()
        with bar:
            while pending:
                fetched = consumer.poll(timeout_ms=200)
                if not fetched and time.monotonic() - last_record > stall_timeout_s:
                    raise ReadStalled(
                        f"reading {topic}: nothing arrived for {stall_timeout_s:.0f} s "
                        "before the end offsets it had at the start"
                    )
                for tp, records in fetched.items():
                    last_record = time.monotonic()
                    if tp not in corrected:  # the first fetch's high watermark (see above)
                        corrected.add(tp)
                        raised = max(ends[tp], consumer.highwater(tp) or 0)
                        bar.total += raised - ends[tp]
                        ends[tp] = raised
                    inside = [r for r in records if r.offset < ends[tp]]
                    yield from inside
                    bar.update(len(inside))
                    if consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
                        consumer.pause(tp)
    finally:
        consumer.close()


__all__ = [
    "NO_VARIANT",
    "ReadStalled",
    "Served",
    "Unreadable",
    "click_event_id",
    "decode_served",
    "read_clicks",
    "read_served",
    "read_to_end",
]
