"""One writer per item: deltas from many workers are summed once each, and a worker
copies the owner's vector only when it already includes the worker's own changes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.item_ledger import CanonicalVector, DeltaTracker, ItemLedger
from stream.item_sync import decode_deltas, decode_vectors, encode_deltas, encode_vectors


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_changes_between_flushes_are_summed_into_one_delta() -> None:
    tracker = DeltaTracker("a")
    tracker.record("x", None, vec(1, 1))
    tracker.record("x", vec(1, 1), vec(2, 0))
    tracker.record("x", vec(2, 0), vec(3, 1))
    [delta] = tracker.drain()
    np.testing.assert_array_equal(delta.delta, vec(2, 0))  # (2,0)-(1,1) + (3,1)-(2,0)
    np.testing.assert_array_equal(delta.latest, vec(3, 1))
    assert delta.seq == 1 and tracker.drain() == []


def test_an_owner_starts_an_unknown_item_from_the_origins_vector_then_adds() -> None:
    ledger = ItemLedger(clock=lambda: 1.0)
    a, b = DeltaTracker("a"), DeltaTracker("b")
    # Both workers start from the same checkpoint vector (0, 0) and change it.
    a.record("x", vec(0, 0), vec(1, 0))
    b.record("x", vec(0, 0), vec(0, 2))
    for delta in a.drain() + b.drain():
        ledger.apply(delta)
    entry = ledger.get("x")
    assert entry is not None
    np.testing.assert_array_equal(entry.vector, vec(1, 2))  # neither change lost
    assert entry.applied == {"a": 1, "b": 1}


def test_a_redelivered_delta_is_applied_once() -> None:
    ledger = ItemLedger()
    tracker = DeltaTracker("a")
    tracker.record("x", vec(0), vec(1))
    tracker.record("y", vec(0), vec(5))
    first = tracker.drain()
    tracker.record("x", vec(1), vec(3))
    second = tracker.drain()
    for delta in first + second + first + second:  # a crash replays both batches
        ledger.apply(delta)
    assert ledger.duplicates == 3
    np.testing.assert_array_equal(ledger.get("x").vector, vec(3))  # type: ignore[union-attr]
    np.testing.assert_array_equal(ledger.get("y").vector, vec(5))  # type: ignore[union-attr]


def test_versions_grow_even_when_the_clock_does_not() -> None:
    ledger = ItemLedger(clock=lambda: 5.0)
    tracker = DeltaTracker("a")
    versions = []
    for step in range(3):
        tracker.record("x", vec(step), vec(step + 1))
        versions.append(ledger.apply(tracker.drain()[0]).version)  # type: ignore[union-attr]
    assert versions == sorted(set(versions)) and versions[0] == 5_000_000


def test_a_worker_keeps_its_own_unacknowledged_change_over_an_older_broadcast() -> None:
    tracker = DeltaTracker("a")
    tracker.record("x", vec(0), vec(1))
    older = CanonicalVector("x", vec(9), 7, {"b": 3})
    assert not tracker.may_overwrite(older)  # still pending here
    [delta] = tracker.drain()
    assert not tracker.may_overwrite(older)  # sent, not yet included
    included = CanonicalVector("x", vec(10), 8, {"b": 3, "a": delta.seq})
    assert tracker.may_overwrite(included)
    assert tracker.may_overwrite(CanonicalVector("y", vec(1), 1, {}))  # never touched


def test_observe_keeps_only_newer_versions() -> None:
    ledger = ItemLedger()
    assert ledger.observe(CanonicalVector("x", vec(1), 2))
    assert not ledger.observe(CanonicalVector("x", vec(0), 1))
    assert not ledger.observe(CanonicalVector("x", vec(0), 2))
    np.testing.assert_array_equal(ledger.get("x").vector, vec(1))  # type: ignore[union-attr]


def test_wire_round_trip_is_exact() -> None:
    tracker = DeltaTracker("w:1")
    tracker.record("item/é", vec(0.1, -2.5), vec(0.3, 1e-7), clicked_at=12.5)
    deltas = tracker.drain()
    [back] = decode_deltas(encode_deltas(deltas))
    assert (back.item_id, back.origin, back.seq, back.clicked_at) == ("item/é", "w:1", 1, 12.5)
    np.testing.assert_array_equal(back.delta, deltas[0].delta)
    entry = CanonicalVector("x", vec(1.5, 2.25), 99, {"w:1": 1}, None)
    [again] = decode_vectors(encode_vectors([entry]))
    assert (again.item_id, again.version, dict(again.applied)) == ("x", 99, {"w:1": 1})
    np.testing.assert_array_equal(again.vector, entry.vector)


@settings(max_examples=60, deadline=None)
@given(
    changes=st.lists(
        st.tuples(st.sampled_from("ab"), st.sampled_from("xy"), st.integers(-3, 3)),
        min_size=1,
        max_size=30,
    ),
    redeliver=st.lists(st.integers(0, 29), max_size=10),
    seed=st.integers(0, 1000),
)
def test_any_interleaving_sums_every_change_exactly_once(
    changes: list[tuple[str, str, int]], redeliver: list[int], seed: int
) -> None:
    # Small integers keep float32 sums exact, so the check can be equality.
    trackers = {name: DeltaTracker(name) for name in "ab"}
    local = {(name, item): vec(0) for name in "ab" for item in "xy"}
    sent = []
    for origin, item, step in changes:
        before = local[(origin, item)]
        local[(origin, item)] = before + step
        trackers[origin].record(item, before, local[(origin, item)])
        if step % 2 == 0:  # flush now and then
            sent += trackers[origin].drain()
    for tracker in trackers.values():
        sent += tracker.drain()
    # Deltas keep their order per origin and item (one partition); origins interleave.
    rng = np.random.default_rng(seed)
    from_a = [d for d in sent if d.origin == "a"]
    from_b = [d for d in sent if d.origin == "b"]
    take_a = rng.permutation([True] * len(from_a) + [False] * len(from_b))
    delivered = [from_a.pop(0) if pick else from_b.pop(0) for pick in take_a]
    delivered += [sent[i] for i in redeliver if i < len(sent)]
    ledger = ItemLedger()
    for delta in delivered:
        ledger.apply(delta)
    for item in "xy":
        total = sum(step for _, i, step in changes if i == item)
        entry = ledger.get(item)
        if entry is not None:
            np.testing.assert_array_equal(entry.vector, vec(total))
