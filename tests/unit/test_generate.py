"""Synthetic clicks are reproducible, well-formed and carry the planted successor pattern."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest

from stream.dev.generate import fresh_run, successor_map, synthetic_clicks
from stream.events import Click, decode_click

N = 5000


def clicks(n: int = N, **kwargs: Any) -> list[dict[str, Any]]:
    return list(synthetic_clicks(n, **kwargs))


def number(value: str, prefix: str) -> int:
    match = re.fullmatch(rf"{prefix}(\d+)", value)
    assert match, f"{value!r} is not {prefix}<number>"
    return int(match.group(1))


def test_same_seed_gives_the_same_stream() -> None:
    assert clicks(seed=3) == clicks(seed=3)


def test_different_seeds_give_different_streams() -> None:
    a, b = clicks(seed=1), clicks(seed=2)
    assert [c["item_id"] for c in a] != [c["item_id"] for c in b]


def test_a_prefix_of_the_stream_does_not_depend_on_n() -> None:
    assert clicks(100, seed=5) == clicks(1000, seed=5)[:100]


def test_exactly_n_events() -> None:
    assert len(clicks(123)) == 123
    assert clicks(0) == []


def test_event_ids_are_unique() -> None:
    ids = [c["event_id"] for c in clicks()]
    assert len(set(ids)) == len(ids)


def test_event_ids_differ_across_seeds() -> None:
    a = {c["event_id"] for c in clicks(100, seed=1)}
    b = {c["event_id"] for c in clicks(100, seed=2)}
    assert not a & b


def test_a_fresh_run_is_the_same_stream_with_new_event_ids() -> None:
    first, second = clicks(100, run=fresh_run()), clicks(100, run=fresh_run())
    assert not {c["event_id"] for c in first} & {c["event_id"] for c in second}
    assert [{**c, "event_id": ""} for c in first] == [{**c, "event_id": ""} for c in second]


@pytest.mark.parametrize(("users", "items"), [(1, 2), (7, 3), (50, 40)])
def test_users_and_items_within_range(users: int, items: int) -> None:
    events = clicks(2000, users=users, items=items, seed=9)
    seen_users = {number(c["user_id"], "u") for c in events}
    seen_items = {number(c["item_id"], "i") for c in events}
    assert seen_users <= set(range(users))
    assert seen_items <= set(range(items))
    # 2000 events are enough to touch every user of these small ranges.
    assert seen_users == set(range(users))


def test_sessions_belong_to_their_user() -> None:
    for c in clicks(1000):
        assert c["session_id"].startswith(c["user_id"] + "-s")


def test_successor_map_is_one_cycle_through_all_items() -> None:
    successor = successor_map(50, seed=4)
    assert sorted(successor) == list(range(50))
    item, visited = 0, set()
    while item not in visited:
        visited.add(item)
        item = successor[item]
    assert len(visited) == 50
    assert successor_map(50, seed=4) == successor


def transitions(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(previous item, next item) for consecutive clicks within each session."""
    last: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    for c in events:
        item = number(c["item_id"], "i")
        session = c["session_id"]
        if session in last:
            pairs.append((last[session], item))
        last[session] = item
    return pairs


@pytest.mark.parametrize("seed", [0, 11])
def test_planted_successor_pattern(seed: int) -> None:
    items = 200
    events = clicks(20_000, users=300, items=items, seed=seed, follow=0.7)
    successor = successor_map(items, seed)
    pairs = transitions(events)
    assert len(pairs) > 10_000
    followed = sum(1 for prev, nxt in pairs if nxt == successor[prev])
    # With follow=0.7 about 70% of transitions go to the successor (a little more,
    # since a popular-item draw can hit it too).
    assert followed / len(pairs) > 0.5

    # And per item: the most frequent next item after i is successor[i].
    nexts: dict[int, Counter[int]] = defaultdict(Counter)
    for prev, nxt in pairs:
        nexts[prev][nxt] += 1
    frequent = [i for i, counter in nexts.items() if counter.total() >= 20]
    assert len(frequent) > 20
    assert all(nexts[i].most_common(1)[0][0] == successor[i] for i in frequent)


def test_follow_zero_plants_no_pattern() -> None:
    # The control: without following, successors are no more likely than chance.
    items = 200
    pairs = transitions(clicks(20_000, users=300, items=items, seed=0, follow=0.0))
    successor = successor_map(items, 0)
    followed = sum(1 for prev, nxt in pairs if nxt == successor[prev])
    assert followed / len(pairs) < 0.1


def test_generated_payloads_decode_as_clicks() -> None:
    for payload in clicks(200):
        result = decode_click(orjson.dumps(payload), record_timestamp=1.7e9, max_bytes=65536)
        assert isinstance(result, Click), result
        assert result.event_id == payload["event_id"]


def test_the_planted_context_stream_ties_each_target_to_its_theme_alone() -> None:
    from collections import defaultdict

    from stream.dev.generate import planted_context_clicks

    events = list(planted_context_clicks(4000, users=50, themes=10, hub=6, seed=3))
    assert len({e["event_id"] for e in events}) == len(events)
    by_user: dict[str, list[str]] = defaultdict(list)
    for event in events:
        by_user[event["user_id"]].append(event["item_id"])
    before_target: set[tuple[str, ...]] = set()
    targets = 0
    for items in by_user.values():
        for at, item in enumerate(items):
            if item.startswith("b"):
                targets += 1
                # The theme 7 clicks back names the target; the 5 clicks before it
                # (covisit's window) are the same hub items for every target.
                assert items[at - 7] == "t" + item[1:]
                before_target.add(tuple(items[at - 5 : at]))
    assert targets > 300
    assert before_target == {("h2", "h3", "h4", "h5", "h6")}
