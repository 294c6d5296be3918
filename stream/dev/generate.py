"""Synthetic click streams with structure a model can learn, and bad input.

Items have Zipf popularity and each item has a fixed "successor": within a session the
next click is that successor with probability `follow`, else a popular item. So the
right answer after item i is known in advance (its successor), which makes the stream
useful for known-answer tests as well as the demo.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson


def successor_map(items: int, seed: int) -> list[int]:
    """successor[i] is the item that planted sequences follow item i with."""
    order = list(range(items))
    random.Random(seed * 7919 + 1).shuffle(order)
    successor = [0] * items
    for position, item in enumerate(order):
        successor[item] = order[(position + 1) % items]
    return successor


def fresh_run() -> str:
    """A run name no earlier run used (64 random bits), for fresh event ids."""
    return secrets.token_hex(8)


def synthetic_clicks(
    n: int,
    *,
    users: int = 1000,
    items: int = 500,
    seed: int = 0,
    follow: float = 0.7,
    session_length: int = 8,
    run: str | None = None,
) -> Iterator[dict[str, Any]]:
    """`n` click payloads (wire dicts without timestamp: the record time is used).

    Deterministic for a seed; every event has a unique `event_id`, `gen-<run>-<i>`.
    `run` defaults to the seed, so the same seed repeats the same ids (a worker skips
    them as duplicates); pass `fresh_run()` for the same stream as new events.
    """
    run = str(seed) if run is None else run
    rng = random.Random(seed)
    successor = successor_map(items, seed)
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(items)]
    popular = list(range(items))
    rng.shuffle(popular)
    current: dict[int, tuple[int, int, int]] = {}  # user -> (session, last item, clicks left)
    for i in range(n):
        user = rng.randrange(users)
        session, last, left = current.get(user, (-1, -1, 0))
        if left <= 0:
            session, left = session + 1, rng.randint(2, 2 * session_length)
            item = rng.choices(popular, weights)[0]
        elif rng.random() < follow:
            item = successor[last]
        else:
            item = rng.choices(popular, weights)[0]
        current[user] = (session, item, left - 1)
        yield {
            "user_id": f"u{user}",
            "item_id": f"i{item}",
            "event_type": "click",
            "session_id": f"u{user}-s{session}",
            "event_id": f"gen-{run}-{i}",
        }


def planted_context_clicks(
    n: int,
    *,
    users: int = 300,
    themes: int = 40,
    hub: int = 6,
    seed: int = 0,
    run: str | None = None,
) -> Iterator[dict[str, Any]]:
    """`n` click payloads whose last click per episode only a model of the user's
    context can predict (the A/B demo's stream, `streamrec dev --variants`).

    Each user repeats episodes of `hub + 2` clicks: a theme item `t<k>` (k uniform over
    `themes`), the same `hub` items every episode (`h1` .. `h<hub>`), then the theme's
    target `b<k>`. The target depends only on the click `hub + 1` steps back, so an
    item-to-item model whose window is shorter than `hub` (covisit's is 5) sees the
    same recent items before every target and can at best spread its list over all the
    targets; a model that carries the user's context (the torch model's GRU state) can
    know which one comes. Theme clicks are unpredictable for every model and hub
    clicks predictable for all. Event ids as `synthetic_clicks` gives them."""
    run = str(seed) if run is None else run
    rng = random.Random(seed)
    episode: dict[int, tuple[int, int]] = {}  # user -> (position in the episode, theme)
    for i in range(n):
        user = rng.randrange(users)
        position, theme = episode.get(user, (0, 0))
        if position == 0:
            theme = rng.randrange(themes)
            item = f"t{theme}"
        elif position <= hub:
            item = f"h{position}"
        else:
            item = f"b{theme}"
        episode[user] = ((position + 1) % (hub + 2), theme)
        yield {
            "user_id": f"u{user}",
            "item_id": item,
            "event_type": "click",
            "event_id": f"gen-{run}-{i}",
        }


def malformed_records(max_event_bytes: int) -> list[tuple[bytes, str]]:
    """(value, expected DLQ reason) for each kind of bad record the demo mixes in."""
    good = {"user_id": "u1", "item_id": "i1"}
    return [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe\x00garbage", "invalid_utf8"),
        (b"", "empty"),
        (orjson.dumps({"item_id": "i1"}), "missing_field"),
        (orjson.dumps({"user_id": "u1"}), "missing_field"),
        (orjson.dumps({**good, "user_id": 42}), "invalid_field"),
        (orjson.dumps({**good, "event_type": "teleport"}), "invalid_field"),
        (orjson.dumps([good]), "not_an_object"),
        (orjson.dumps({**good, "pad": "x" * max_event_bytes}), "too_large"),
        (orjson.dumps({**good, "timestamp": 1e13}), "bad_timestamp"),
    ]


# What the worker does with the two kinds of bad input that are valid clicks.
DUPLICATE = "duplicate"  # skipped, streamrec_duplicates_skipped_total
OUT_OF_ORDER = "out_of_order"  # applied, streamrec_events_out_of_order_total
POLICIES = (DUPLICATE, OUT_OF_ORDER)


@dataclass(frozen=True, slots=True)
class BadRecord:
    """One bad record of the corpus.

    `expect` is the DLQ `error` header `decode_click` gives `value`, or one of
    `POLICIES` for a valid click that is a repeat or late. Those two must be sent keyed
    by `key` (the user id), after `after`, a valid click of the same user that gets its
    own recommendation; the others may be sent with any key or none.
    """

    kind: str
    value: bytes
    expect: str
    key: bytes | None = None
    after: bytes | None = None


def bad_input_corpus(max_event_bytes: int, *, now: float, tag: str = "bad") -> list[BadRecord]:
    """Every kind of bad input the worker must survive, each with its expected outcome.

    `now` is the record time the records will be sent at (timestamps are relative to
    it); `tag` prefixes the user and event ids of the two policy kinds, so a stream can
    hold several copies. Every value is distinct and, where it is a JSON object, names
    its kind in a `bad` field. The two largest values (1 MiB and 20 MiB) need a
    producer whose request limit exceeds 20 MiB; `max_event_bytes` must be under 1 MiB.
    """
    if max_event_bytes >= 1 << 20:
        raise ValueError("the corpus's 1 MiB value must be over max_event_bytes")

    def obj(kind: str, **fields: Any) -> bytes:
        return orjson.dumps({"user_id": "u1", "item_id": "i1", "bad": kind, **fields})

    def raw(kind: str, fields: bytes) -> bytes:
        # For what orjson will not write (NaN, 1e400, ...): a valid object plus `fields`.
        return b'{"user_id": "u1", "item_id": "i1", "bad": "%s", %s}' % (kind.encode(), fields)

    def sized(kind: str, size: int) -> bytes:
        # A valid click padded to exactly `size` bytes: its size is its only problem.
        head = obj(kind, pad="")
        return head[:-2] + b"x" * (size - len(head)) + b'"}'

    nested = b"[" * 1000 + b"]" * 1000  # orjson parses up to 1024 levels
    rejected = [  # (kind, value, the DLQ `error` header)
        (
            "invalid_json",
            b'{"user_id": "u1", "item_id": "i1", "bad": "invalid_json"',
            "invalid_json",
        ),
        (
            "non_utf8",
            b'{"user_id": "u\xff\xfe1", "item_id": "i1", "bad": "non_utf8"}',
            "invalid_utf8",
        ),
        ("empty_value", b"", "empty"),
        ("json_array", orjson.dumps([{"user_id": "u1", "item_id": "i1"}]), "not_an_object"),
        (
            "missing_user_id",
            orjson.dumps({"item_id": "i1", "bad": "missing_user_id"}),
            "missing_field",
        ),
        (
            "missing_item_id",
            orjson.dumps({"user_id": "u1", "bad": "missing_item_id"}),
            "missing_field",
        ),
        ("user_id_number", obj("user_id_number", user_id=42), "invalid_field"),
        ("item_id_list", obj("item_id_list", item_id=["i1", "i2"]), "invalid_field"),
        ("empty_user_id", obj("empty_user_id", user_id=""), "invalid_field"),
        ("huge_user_id", obj("huge_user_id", user_id="u" * 10_000), "invalid_field"),
        ("unknown_event_type", obj("unknown_event_type", event_type="teleport"), "invalid_field"),
        ("timestamp_string", obj("timestamp_string", timestamp=str(int(now))), "invalid_field"),
        # orjson refuses NaN and Infinity literals, and numbers beyond a double, while
        # parsing, so these never reach the field checks.
        ("nan_timestamp", raw("nan_timestamp", b'"timestamp": NaN'), "invalid_json"),
        ("infinity_timestamp", raw("infinity_timestamp", b'"timestamp": Infinity'), "invalid_json"),
        ("overflow_timestamp", raw("overflow_timestamp", b'"timestamp": 1e400'), "invalid_json"),
        # An integer beyond 64 bits parses as a float (1e31): a number, out of range.
        (
            "huge_int_timestamp",
            raw("huge_int_timestamp", b'"timestamp": ' + b"9" * 31),
            "bad_timestamp",
        ),
        ("future_timestamp", obj("future_timestamp", timestamp=now + 30 * 86_400), "bad_timestamp"),
        (
            "past_timestamp",
            obj("past_timestamp", timestamp=599_616_000.0),  # 1989-01-01
            "bad_timestamp",
        ),
        (
            "millisecond_timestamp",
            obj("millisecond_timestamp", timestamp=now * 1000),
            "bad_timestamp",
        ),
        (
            "nested_context",
            obj("nested_context", context={"device": {"os": "ios"}}),
            "invalid_field",
        ),
        (
            "deeply_nested_value",
            raw("deeply_nested_value", b'"event_type": ' + nested),
            "invalid_field",
        ),
        ("too_deeply_nested", b"[" * 5000 + b"]" * 5000, "invalid_json"),
        ("just_over_the_limit", sized("just_over_the_limit", max_event_bytes + 1), "too_large"),
        ("one_mib", sized("one_mib", 1 << 20), "too_large"),
        ("twenty_mib", sized("twenty_mib", 20 << 20), "too_large"),
    ]
    records = [BadRecord(kind, value, reason) for kind, value, reason in rejected]

    # A repeat of a click already applied, and a click older than the user's last one;
    # one user each, so every policy record has its own `after`.
    def click(user: str, item: str, event: str, timestamp: float) -> bytes:
        return orjson.dumps(
            {"user_id": user, "item_id": item, "event_id": event, "timestamp": timestamp}
        )

    repeated = click(f"{tag}-dup", "i1", f"{tag}-dup-e1", now)
    before = click(f"{tag}-late", "i1", f"{tag}-late-e1", now)
    late = click(f"{tag}-late", "i2", f"{tag}-late-e2", now - 3600)
    records += [
        BadRecord("duplicate_event_id", repeated, DUPLICATE, f"{tag}-dup".encode(), repeated),
        BadRecord("out_of_order", late, OUT_OF_ORDER, f"{tag}-late".encode(), before),
    ]
    return records
