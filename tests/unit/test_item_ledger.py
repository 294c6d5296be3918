"""One writer per item: each click's delta is applied once, whichever worker sends it
and however often it is replayed, and a worker copies the owner's vector only when it
already includes the worker's own changes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.items.ledger import CanonicalVector, DeltaTracker, ItemLedger
from stream.items.sync import decode_deltas, decode_vectors, encode_deltas, encode_vectors


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_each_click_is_one_delta_tagged_with_where_it_was_read() -> None:
    tracker = DeltaTracker()
    tracker.record("x", None, vec(1, 1), source="c0", offset=7)
    tracker.record("x", vec(1, 1), vec(2, 0), source="c0", offset=8)
    first, second = tracker.drain()
    np.testing.assert_array_equal(first.delta, vec(0, 0))  # created: nothing to add
    np.testing.assert_array_equal(second.delta, vec(1, -1))
    np.testing.assert_array_equal(second.latest, vec(2, 0))
    assert (second.source, second.offset) == ("c0", 8)
    assert tracker.drain() == []


def test_an_owner_starts_an_unknown_item_from_the_senders_vector_then_adds() -> None:
    ledger = ItemLedger(clock=lambda: 1.0)
    a, b = DeltaTracker(), DeltaTracker()
    # Two workers start from the same checkpoint vector (0, 0) and change it.
    a.record("x", vec(0, 0), vec(1, 0), source="c0", offset=0)
    b.record("x", vec(0, 0), vec(0, 2), source="c1", offset=0)
    for delta in a.drain() + b.drain():
        ledger.apply(delta)
    entry = ledger.get("x")
    assert entry is not None
    np.testing.assert_array_equal(entry.vector, vec(1, 2))  # neither change lost
    assert entry.applied == {"c0": 0, "c1": 0} and entry.events == 2


def test_a_replayed_click_changes_the_vector_once() -> None:
    ledger = ItemLedger()
    tracker = DeltaTracker()
    tracker.record("x", vec(0), vec(1), source="c0", offset=10)
    tracker.record("y", vec(0), vec(5), source="c0", offset=10)
    tracker.record("x", vec(1), vec(3), source="c0", offset=11)
    sent = tracker.drain()
    for delta in sent:
        ledger.apply(delta)
    # A crash before the offset commit: the same clicks are read and applied again.
    for delta in sent:
        assert ledger.apply(delta) is None
    assert ledger.duplicates == 3
    np.testing.assert_array_equal(ledger.get("x").vector, vec(3))  # type: ignore[union-attr]
    np.testing.assert_array_equal(ledger.get("y").vector, vec(5))  # type: ignore[union-attr]
    assert ledger.get("x").events == 2  # type: ignore[union-attr]


def test_versions_grow_even_when_the_clock_does_not() -> None:
    ledger = ItemLedger(clock=lambda: 5.0)
    tracker = DeltaTracker()
    versions = []
    for step in range(3):
        tracker.record("x", vec(step), vec(step + 1), source="c0", offset=step)
        versions.append(ledger.apply(tracker.drain()[0]).version)  # type: ignore[union-attr]
    assert versions == sorted(set(versions)) and versions[0] == 5_000_000


def test_a_worker_keeps_its_own_unacknowledged_change_over_an_older_broadcast() -> None:
    tracker = DeltaTracker()
    tracker.record("x", vec(0), vec(1), source="c2", offset=40)
    older = CanonicalVector("x", vec(9), 7, {"c1": 3})
    assert not tracker.may_overwrite(older)  # still pending here
    tracker.drain()
    assert not tracker.may_overwrite(older)  # sent, not yet included
    assert not tracker.may_overwrite(CanonicalVector("x", vec(9), 8, {"c1": 3, "c2": 39}))
    included = CanonicalVector("x", vec(10), 9, {"c1": 3, "c2": 40})
    assert tracker.may_overwrite(included)
    assert tracker.may_overwrite(CanonicalVector("y", vec(1), 1, {}))  # never touched


def test_observe_keeps_only_newer_versions() -> None:
    ledger = ItemLedger()
    assert ledger.observe(CanonicalVector("x", vec(1), 2))
    assert not ledger.observe(CanonicalVector("x", vec(0), 1))
    assert not ledger.observe(CanonicalVector("x", vec(0), 2))
    np.testing.assert_array_equal(ledger.get("x").vector, vec(1))  # type: ignore[union-attr]


def test_wire_round_trip_is_exact() -> None:
    tracker = DeltaTracker()
    tracker.record(
        "item/é", vec(0.1, -2.5), vec(0.3, 1e-7), source="u3", offset=9, clicked_at=12.5, model="m"
    )
    deltas = tracker.drain()
    [back] = decode_deltas(encode_deltas(deltas))
    assert (back.item_id, back.source, back.offset, back.clicked_at, back.model) == (
        "item/é",
        "u3",
        9,
        12.5,
        "m",
    )
    np.testing.assert_array_equal(back.delta, deltas[0].delta)
    entry = CanonicalVector("x", vec(1.5, 2.25), 99, {"c1": 1}, None, 4, "m")
    [again] = decode_vectors(encode_vectors([entry]))
    assert (again.item_id, again.version, dict(again.applied), again.events, again.model) == (
        "x",
        99,
        {"c1": 1},
        4,
        "m",
    )
    np.testing.assert_array_equal(again.vector, entry.vector)


@settings(max_examples=60, deadline=None)
@given(
    changes=st.lists(
        st.tuples(st.sampled_from(["c0", "c1"]), st.sampled_from("xy"), st.integers(-3, 3)),
        min_size=1,
        max_size=30,
    ),
    replay_from=st.lists(st.integers(0, 30), max_size=3),
    seed=st.integers(0, 1000),
)
def test_any_interleaving_and_replay_sums_every_click_exactly_once(
    changes: list[tuple[str, str, int]], replay_from: list[int], seed: int
) -> None:
    # Two sources (input partitions), each applied in order by one worker; the owner
    # sees their delta streams interleaved, and a source may be replayed from any
    # earlier offset (a crash before its commit). Small integers keep float32 sums
    # exact, so the check can be equality.
    streams: dict[str, list] = {"c0": [], "c1": []}
    local = {(src, item): vec(0) for src in streams for item in "xy"}
    offsets = {"c0": 0, "c1": 0}
    for source, item, step in changes:
        tracker = DeltaTracker()
        before = local[(source, item)]
        local[(source, item)] = before + step
        tracker.record(item, before, local[(source, item)], source=source, offset=offsets[source])
        offsets[source] += 1
        streams[source] += tracker.drain()
    rng = np.random.default_rng(seed)
    for source, start in zip(("c0", "c1", "c0"), replay_from, strict=False):
        streams[source] = streams[source] + [d for d in streams[source] if d.offset >= start]
    take_c0 = rng.permutation([True] * len(streams["c0"]) + [False] * len(streams["c1"]))
    delivered = [streams["c0" if pick else "c1"].pop(0) for pick in take_c0]
    ledger = ItemLedger()
    for delta in delivered:
        ledger.apply(delta)
    for item in "xy":
        total = sum(step for _, i, step in changes if i == item)
        entry = ledger.get(item)
        if entry is not None:
            np.testing.assert_array_equal(entry.vector, vec(total))
            assert entry.events == sum(1 for _, i, _ in changes if i == item)


def test_a_lone_writers_canonical_vector_is_its_own_bit_for_bit() -> None:
    # Adding float32 deltas would drift from the writer's own vector in the last bits,
    # which would make a replay's recommendations depend on when broadcasts arrive.
    rng = np.random.default_rng(3)
    ledger, tracker = ItemLedger(), DeltaTracker()
    local = None
    for offset in range(200):
        after = (rng.standard_normal(8) * 10.0 ** rng.integers(-6, 3)).astype(np.float32)
        tracker.record("x", local, after, source="c0", offset=offset)
        local = after
        for delta in tracker.drain():
            ledger.apply(delta)
        np.testing.assert_array_equal(ledger.get("x").vector, local)  # type: ignore[union-attr]


def test_a_ledger_takes_only_its_models_deltas_and_broadcasts() -> None:
    ledger = ItemLedger(model="gru:v1")
    tracker = DeltaTracker()
    tracker.record("x", None, vec(1), source="c0", offset=1, model="gru:v1")
    tracker.record("x", vec(1), vec(2), source="c0", offset=2, model="gru:v0")
    first, stale = tracker.drain()
    assert ledger.apply(first) is not None
    assert ledger.apply(stale) is None and ledger.other_model == 1
    assert not ledger.observe(CanonicalVector("x", vec(7), 10**17, {}, model="gru:v0"))
    assert ledger.get("x").model == "gru:v1"  # type: ignore[union-attr]
    # Untagged records (written before the tags) count as the current model's.
    assert ledger.observe(CanonicalVector("y", vec(3), 5, {}))


def test_after_a_model_swap_an_item_starts_afresh_in_the_new_space() -> None:
    ledger = ItemLedger(clock=lambda: 1.0, model="gru:v1")
    tracker = DeltaTracker()
    tracker.record("x", None, vec(1), source="c0", offset=1, model="gru:v1")
    tracker.record("x", vec(1), vec(3), source="c0", offset=2, model="gru:v1")
    for delta in tracker.drain():
        ledger.apply(delta)
    old = ledger.get("x")
    assert old is not None and old.vector.tolist() == vec(3).tolist()
    ledger.model = "gru:v2"
    # The new model's first change of x: its `before` is v2's vector, not v1's, and the
    # v1 entry is no base to add the change to: the delta's own vector is taken.
    tracker.record("x", vec(10), vec(11), source="c0", offset=3, model="gru:v2")
    (delta,) = tracker.drain()
    entry = ledger.apply(delta)
    assert entry is not None and entry.vector.tolist() == vec(11).tolist()
    assert entry.model == "gru:v2" and entry.version > old.version
