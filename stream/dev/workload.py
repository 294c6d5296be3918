"""Click streams for benchmarks and fault tests, drawn from a catalogue of N items.

The stream is drawn with NumPy so that a 1M-item catalogue costs no more to sample from
than a small one: item popularity is Zipf-like (exponent 1.1) and, within a session, a
click follows its predecessor's fixed successor 70% of the time, so the model has real
sequential structure to learn. Deterministic for a seed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np


def item_id(row: int) -> str:
    return f"i{row}"


def _catalogue(rng: np.random.Generator, items: int) -> tuple[Any, np.ndarray]:
    """A Zipf-like (exponent 1.1) draw of item rows and each item's fixed successor."""
    ranks = np.arange(1, items + 1, dtype=np.float64)
    cumulative = np.cumsum(ranks**-1.1)
    popular = rng.permutation(items)
    successor = rng.permutation(items)

    def draw(n: int) -> np.ndarray:
        return popular[np.searchsorted(cumulative, rng.random(n) * cumulative[-1])]

    return draw, successor


def click_stream(
    n: int, *, items: int, users: int = 20_000, seed: int = 0, follow: float = 0.7
) -> list[dict[str, Any]]:
    """`n` click payloads keyed by user, with unique event ids and the current time."""
    rng = np.random.default_rng(seed)
    draw, successor = _catalogue(rng, items)
    user_of = rng.integers(0, users, n)
    fresh = draw(n)
    follows = rng.random(n) < follow
    last: dict[int, int] = {}
    now = time.time()
    events = []
    for i in range(n):
        user = int(user_of[i])
        previous = last.get(user)
        item = int(successor[previous]) if previous is not None and follows[i] else int(fresh[i])
        last[user] = item
        events.append(
            {
                "user_id": f"u{user}",
                "item_id": item_id(item),
                "event_id": f"b{seed}-{i}",
                "timestamp": now,
            }
        )
    return events


def arriving_users(
    n: int,
    *,
    users: int,
    items: int,
    seed: int = 0,
    follow: float = 0.7,
    spread: int = 2000,
    chunk: int = 100_000,
    start: float = 1_700_000_000.0,
    cover: bool = True,
) -> Iterator[list[dict[str, Any]]]:
    """`n` clicks in chunks, from `users` users who arrive over the stream and leave:
    each clicks n // users times (the first n % users once more) within about
    `spread` consecutive events, and is never seen again, so every user is distinct
    and a worker must drop idle ones to stay bounded. With `cover`, one click in
    n // items walks the catalogue in order, so every one of `items` items occurs
    when n >= items; the rest follow the predecessor's successor (`follow`) or the Zipf draw. Event
    times advance 1 ms per click from `start`. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    draw, successor = _catalogue(rng, items)
    # Each user's clicks side by side, then jittered by up to `spread` positions so
    # nearby users interleave the way concurrent sessions do.
    owner = np.sort(np.arange(n, dtype=np.int64) % users)
    owner = owner[np.argsort(np.arange(n) + rng.integers(0, spread, n), kind="stable")]
    stride = max(1, n // items) if cover else n + 1
    last = np.full(users, -1, dtype=np.int64)
    for begin in range(0, n, chunk):
        end = min(n, begin + chunk)
        fresh, follows = draw(end - begin), rng.random(end - begin) < follow
        events = []
        for i in range(begin, end):
            user = int(owner[i])
            if cover and i % stride == 0:
                item = (i // stride) % items
            elif last[user] >= 0 and follows[i - begin]:
                item = int(successor[last[user]])
            else:
                item = int(fresh[i - begin])
            last[user] = item
            events.append(
                {
                    "user_id": f"m{user}",
                    "item_id": item_id(item),
                    "event_id": f"m{seed}-{i}",
                    "timestamp": start + i / 1000,
                }
            )
        yield events
