"""Synthetic click streams with structure a model can learn, and malformed records.

Items have Zipf popularity and each item has a fixed "successor": within a session the
next click is that successor with probability `follow`, else a popular item. So the
right answer after item i is known in advance (its successor), which makes the stream
useful for known-answer tests as well as the demo.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
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


def synthetic_clicks(
    n: int,
    *,
    users: int = 1000,
    items: int = 500,
    seed: int = 0,
    follow: float = 0.7,
    session_length: int = 8,
) -> Iterator[dict[str, Any]]:
    """`n` click payloads (wire dicts without timestamp: the record time is used).

    Deterministic for a seed; every event has a unique `event_id`.
    """
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
            "event_id": f"gen-{seed}-{i}",
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
