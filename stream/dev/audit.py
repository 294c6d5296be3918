"""Checking what a run wrote against what it was sent: the verdict of the fault harness
(`bench/chaos.py`) and of the fault tests.

Everything is read from Kafka, never from a worker's memory or metrics, so a worker
killed mid-run cannot hide its mistakes:

- the recommendations topic: every accepted click must have at least one recommendation
  (`source_event_id`); repeats are allowed after a crash, and counted;
- the user table's changelog, read to its end (the last value per key is the table's
  final state): each user's `UserRecord.applied` must equal the number of distinct
  clicks sent for that user. Over is an effect applied twice, under an effect lost;
- the item-vectors topic: each item's last canonical vector says how many clicks'
  deltas it sums (`CanonicalVector.events`), comparable with a replay of the same input.

Reading blocks until the topic has been silent for `idle_timeout_s`: the embedded
broker under-reports end offsets (docs/embedded-broker.md), so "the end" is "nothing more
came".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stream.events import Recommendation
from stream.items.sync import decode_vectors
from stream.kafka.consumer import make_consumer
from stream.settings import Settings
from stream.worker.pipeline import UserRecord

# What a replay of the same input must reproduce in each user's record, whatever the
# model: the context fields no model's shared state reaches, and the dedup bookkeeping.
# The torch GRU state (`context.state`) and `last_recommended` depend on every other
# user's clicks through the shared item vectors (and, with several workers, on how a
# worker interleaves its partitions), so they are compared only for models without
# shared learned state in the context (see `comparable_fields`).
USER_FIELDS = ("recent", "clicks", "last_timestamp", "applied", "event_ids")


def comparable_fields(model: str) -> tuple[str, ...]:
    """The user-record fields a replay into one worker must give bit for bit.

    `covisit` and `popularity` keep no learned state in the context (`state` is empty),
    so the whole context is compared (`state` included, as a check that it stays empty);
    `torch` keeps a GRU hidden state computed from shared item embeddings, which differ
    with the order clicks of different users meet them in, so it is left out."""
    return USER_FIELDS if model == "torch" else (*USER_FIELDS, "state")


def read_topic_to_end(settings: Settings, topic: str, idle_timeout_s: float = 2.0) -> list[Any]:
    """Every record of `topic` from the beginning, until it stays silent for
    `idle_timeout_s`. Blocks; raises BrokerUnreachable when there is no broker."""
    consumer = make_consumer(settings.bootstrap_servers, [topic], idle_timeout_s=idle_timeout_s)
    try:
        return list(consumer)
    finally:
        consumer.close()


def recommendation_counts(settings: Settings, idle_timeout_s: float = 2.0) -> Counter[str]:
    """source_event_id -> number of recommendation events emitted for it."""
    records = read_topic_to_end(settings, settings.recommendations_topic, idle_timeout_s)
    return Counter(Recommendation.from_json(r.value).source_event_id for r in records)


def final_user_records(settings: Settings, idle_timeout_s: float = 2.0) -> dict[str, UserRecord]:
    """user id -> the user's last record on the table's changelog (the final state)."""
    final: dict[str, UserRecord] = {}
    for record in read_topic_to_end(settings, settings.changelog_topic, idle_timeout_s):
        if record.key is None:
            continue
        user = record.key.decode()
        if record.value is None:  # a tombstone: the user was deleted
            final.pop(user, None)
        else:
            final[user] = UserRecord.from_bytes(record.value)
    return final


def final_item_events(settings: Settings, idle_timeout_s: float = 2.0) -> dict[str, int]:
    """item id -> clicks' deltas summed in the newest canonical vector of the item
    (empty for models without item vectors, e.g. covisit)."""
    newest: dict[str, tuple[int, int]] = {}  # item -> (version, events)
    for record in read_topic_to_end(settings, settings.item_vectors_topic, idle_timeout_s):
        for entry in decode_vectors(record.value):
            known = newest.get(entry.item_id)
            if known is None or entry.version > known[0]:
                newest[entry.item_id] = (entry.version, entry.events)
    return {item: events for item, (_, events) in newest.items()}


@dataclass(frozen=True, slots=True)
class Verdict:
    """A run's output checked against its input. `ok` needs nothing lost, nothing
    applied twice and no applied effect missing from the user state."""

    events: int
    lost: int  # accepted clicks with no recommendation at all
    double_applied: int  # clicks counted in a user's `applied` more than once
    under_applied: int  # clicks with a recommendation whose effect is not in the state
    duplicate_recommendations: int  # recommendation events beyond the first per click
    users: int
    lost_ids: tuple[str, ...] = ()  # the first few, for a report

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.double_applied == 0 and self.under_applied == 0


def check(
    events: Iterable[Mapping[str, Any]],
    recommendations: Mapping[str, int],
    users: Mapping[str, UserRecord],
) -> Verdict:
    """Compare the input `events` (click payloads with `event_id` and `user_id`, each
    id sent once or repeated) with what the workers wrote. Pure; never blocks."""
    expected: dict[str, set[str]] = {}
    for event in events:
        expected.setdefault(str(event["user_id"]), set()).add(str(event["event_id"]))
    every_id = {e for ids in expected.values() for e in ids}
    lost = sorted(every_id - set(recommendations))
    double = under = 0
    for user, ids in expected.items():
        record = users.get(user)
        applied = record.applied if record is not None else 0
        double += max(0, applied - len(ids))
        under += max(0, len(ids) - applied)
    return Verdict(
        events=len(every_id),
        lost=len(lost),
        double_applied=double,
        under_applied=under,
        duplicate_recommendations=sum(
            n - 1 for event_id, n in recommendations.items() if event_id in every_id and n > 1
        ),
        users=len(expected),
        lost_ids=tuple(lost[:10]),
    )


def user_view(record: UserRecord, fields: Iterable[str]) -> tuple[Any, ...]:
    """The named fields of a user record (context fields or record fields), to compare."""
    context = record.context.to_dict()
    view = []
    for name in fields:
        value = context[name] if name in context else getattr(record, name)
        view.append(tuple(value) if isinstance(value, (list, tuple)) else value)
    return tuple(view)


def state_mismatches(
    left: Mapping[str, UserRecord], right: Mapping[str, UserRecord], fields: Iterable[str]
) -> list[str]:
    """Users whose `fields` differ between two final states (or who are in only one),
    sorted."""
    names = tuple(fields)
    return sorted(
        user
        for user in set(left) | set(right)
        if user not in left
        or user not in right
        or user_view(left[user], names) != user_view(right[user], names)
    )


def state_differences(
    left: Mapping[str, UserRecord],
    right: Mapping[str, UserRecord],
    fields: Iterable[str],
    users: Iterable[str],
) -> list[str]:
    """For each of `users`, one line naming the fields that differ between `left` (the
    run) and `right` (the replay), with both values: what a failed comparison shows."""
    names = tuple(fields)
    lines = []
    for user in users:
        if user not in left or user not in right:
            lines.append(f"{user}: only in the {'replay' if user in right else 'run'}")
            continue
        run, again = user_view(left[user], names), user_view(right[user], names)
        differing = [
            f"{name} run={a!r} replay={b!r}"
            for name, a, b in zip(names, run, again, strict=True)
            if a != b
        ]
        lines.append(f"{user}: " + "; ".join(differing))
    return lines


def item_event_excess(run: Mapping[str, int], replay: Mapping[str, int]) -> int:
    """Deltas an item's canonical vector sums beyond what a replay's does: an item
    delta applied twice. 0 when neither run has item vectors."""
    return sum(max(0, n - replay.get(item, 0)) for item, n in run.items())
