"""The user record's byte format (stream/worker/records.py): packed, versioned, and
still able to read every record the JSON format before it wrote."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.base import UserContext
from stream.worker.records import RECORD_FORMAT, UnknownRecordFormat, UserRecord

T = 1_700_000_000.25
# Ids may hold anything JSON can, including the field names of the JSON format.
TRICKY = '"last_timestamp":5,}'
float32s = st.floats(width=32, allow_nan=False, allow_infinity=False)
ids = st.text(min_size=1, max_size=20)


def old_json_record(record: UserRecord) -> bytes:
    """What the JSON format (before RECORD_FORMAT 1) wrote for `record`."""
    return orjson.dumps(
        {
            "context": record.context.to_dict(),
            "event_ids": record.event_ids,
            "last_recommended": record.last_recommended,
            "applied": record.applied,
        }
    )


SAMPLE = UserRecord(
    UserContext((TRICKY, "b"), (0.5, -1.25, 3.0), 7, T), (TRICKY, "e2"), ("x", TRICKY), 9
)


def test_a_record_round_trips_and_starts_with_its_version() -> None:
    raw = SAMPLE.to_bytes()
    assert raw[0] == 1  # no history: the format workers before version 2 read
    assert UserRecord.from_bytes(raw) == SAMPLE
    assert UserRecord.from_bytes(UserRecord(UserContext()).to_bytes()) == UserRecord(UserContext())
    with_history = dataclasses.replace(SAMPLE, history=("a", TRICKY, "c"))
    raw = with_history.to_bytes()
    assert raw[0] == RECORD_FORMAT == 2
    assert UserRecord.from_bytes(raw) == with_history
    assert UserRecord.last_timestamp_of(raw) == T
    # What a history costs: the ids as a JSON array, one comma and two quotes each.
    assert len(raw) - len(SAMPLE.to_bytes()) == len(orjson.dumps(with_history.history)) + 1


@given(
    recent=st.lists(ids, max_size=5),
    state=st.lists(float32s, max_size=40),
    clicks=st.integers(0, 2**40),
    last=st.floats(0, 4e9),
    event_ids=st.lists(ids, max_size=5),
    shown=st.lists(ids, max_size=5),
    applied=st.integers(0, 2**40),
    history=st.lists(ids, max_size=5, unique=True),
)
def test_any_record_with_float32_state_round_trips(
    recent: list[str],
    state: list[float],
    clicks: int,
    last: float,
    event_ids: list[str],
    shown: list[str],
    applied: int,
    history: list[str],
) -> None:
    record = UserRecord(
        UserContext(tuple(recent), tuple(state), clicks, last),
        tuple(event_ids),
        tuple(shown),
        applied,
        tuple(history),
    )
    raw = record.to_bytes()
    assert UserRecord.from_bytes(raw) == record
    assert UserRecord.last_timestamp_of(raw) == last


def test_state_is_stored_as_float32() -> None:
    record = UserRecord(UserContext(state=(0.1,)))
    assert len(record.to_bytes()) - len(UserRecord(UserContext()).to_bytes()) == 4
    # 0.1 is not a float32: it comes back as the nearest one.
    assert UserRecord.from_bytes(record.to_bytes()).context.state == (0.10000000149011612,)


def test_a_record_the_json_format_wrote_still_loads() -> None:
    raw = old_json_record(SAMPLE)
    assert raw.startswith(b"{")
    assert UserRecord.from_bytes(raw) == SAMPLE
    assert UserRecord.last_timestamp_of(raw) == T
    # Records written before last_recommended and applied existed.
    oldest = orjson.dumps({"context": {"recent": ["a"], "last_timestamp": T}, "event_ids": ["e"]})
    assert UserRecord.from_bytes(oldest) == UserRecord(UserContext(("a",), (), 0, T), ("e",), (), 0)


def test_last_timestamp_is_read_from_the_header() -> None:
    raw = bytearray(SAMPLE.to_bytes())
    raw[-1:] = b"?"  # the id lists are not read: a broken tail does not matter here
    assert UserRecord.last_timestamp_of(bytes(raw)) == T
    with pytest.raises(ValueError, match="malformed"):
        UserRecord.from_bytes(bytes(raw))


def test_an_unknown_version_is_refused_with_a_clear_error() -> None:
    raw = bytes([RECORD_FORMAT + 1]) + SAMPLE.to_bytes()[1:]
    with pytest.raises(UnknownRecordFormat, match=f"version {RECORD_FORMAT + 1} is unknown"):
        UserRecord.from_bytes(raw)
    with pytest.raises(UnknownRecordFormat):
        UserRecord.last_timestamp_of(raw)


def test_a_record_cut_short_is_refused() -> None:
    raw = SAMPLE.to_bytes()
    for cut in (0, 5, 30, 35):
        with pytest.raises(ValueError):
            UserRecord.from_bytes(raw[:cut])
