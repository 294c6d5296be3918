"""`decode_click` routes every bad record to a reason and never raises; wire round trips."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.dev.generate import POLICIES, bad_input_corpus, malformed_records
from stream.events import (
    EVENT_TYPES,
    MAX_CONTEXT_KEYS,
    MAX_FUTURE_SKEW_S,
    MAX_ID_CHARS,
    MIN_EVENT_TIME,
    Click,
    Recommendation,
    RecommendedItem,
    Rejected,
    dead_letter,
    decode_click,
)

NOW = 1_700_000_000.0  # the Kafka record time of every test record
MAX_BYTES = 4096
GOOD = {"user_id": "u1", "item_id": "i1"}


def decode(value: bytes | None, *, max_bytes: int = MAX_BYTES) -> Click | Rejected:
    return decode_click(value, record_timestamp=NOW, max_bytes=max_bytes)


def decode_obj(data: Any) -> Click | Rejected:
    return decode(orjson.dumps(data))


def reason_of(result: Click | Rejected) -> str:
    assert isinstance(result, Rejected), f"expected a rejection, got {result!r}"
    return result.reason


# --- rejections -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, b""])
def test_empty_value_is_rejected(value: bytes | None) -> None:
    assert reason_of(decode(value)) == "empty"


def test_value_over_max_bytes_is_too_large() -> None:
    value = orjson.dumps({**GOOD, "pad": "x" * 100})
    assert reason_of(decode(value, max_bytes=len(value) - 1)) == "too_large"
    # Exactly at the limit is fine.
    assert isinstance(decode(value, max_bytes=len(value)), Click)


@pytest.mark.parametrize("value", [b"{not json", b"{", b"NaN", b"Infinity", b'{"a": 1,}', b"\x00"])
def test_invalid_json(value: bytes) -> None:
    assert reason_of(decode(value)) == "invalid_json"


@pytest.mark.parametrize(
    "value", [b"\xff\xfe\x00garbage", b'{"user_id": "\xff", "item_id": "i1"}', b'"\xed\xa0\x80"']
)
def test_invalid_utf8(value: bytes) -> None:
    assert reason_of(decode(value)) == "invalid_utf8"


@pytest.mark.parametrize("data", [[GOOD], "u1", 42, None, True])
def test_json_that_is_not_an_object(data: Any) -> None:
    assert reason_of(decode_obj(data)) == "not_an_object"


@pytest.mark.parametrize("missing", ["user_id", "item_id"])
def test_missing_required_field(missing: str) -> None:
    data = {k: v for k, v in GOOD.items() if k != missing}
    result = decode_obj(data)
    assert reason_of(result) == "missing_field"
    assert missing in result.detail  # type: ignore[union-attr]


@pytest.mark.parametrize("key", ["user_id", "item_id", "session_id", "event_id"])
@pytest.mark.parametrize(
    "bad",
    [42, 1.5, True, ["u1"], {"id": "u1"}, "", "x" * (MAX_ID_CHARS + 1)],
    ids=["int", "float", "bool", "list", "object", "empty", "too_long"],
)
def test_bad_ids_are_invalid_fields(key: str, bad: Any) -> None:
    result = decode_obj({**GOOD, key: bad})
    assert reason_of(result) == "invalid_field"
    assert key in result.detail  # type: ignore[union-attr]


@pytest.mark.parametrize("key", ["user_id", "item_id", "session_id", "event_id"])
def test_id_of_exactly_max_chars_is_accepted(key: str) -> None:
    assert isinstance(decode_obj({**GOOD, key: "x" * MAX_ID_CHARS}), Click)


def test_null_user_id_is_invalid_not_missing() -> None:
    assert reason_of(decode_obj({**GOOD, "user_id": None})) == "invalid_field"


@pytest.mark.parametrize("event_type", ["teleport", "", "CLICK", 1, None])
def test_unknown_event_type_is_invalid_field(event_type: Any) -> None:
    assert reason_of(decode_obj({**GOOD, "event_type": event_type})) == "invalid_field"


@pytest.mark.parametrize("event_type", [["click"], {"type": "click"}], ids=["list", "object"])
def test_unhashable_event_type_is_invalid_field_not_an_exception(event_type: Any) -> None:
    # Bug: `event_type not in EVENT_TYPES` (a frozenset) raises TypeError for a JSON
    # array or object, so this record crashes the agent instead of going to the DLQ.
    value = orjson.dumps({**GOOD, "event_type": event_type})
    try:
        result = decode(value)
    except TypeError as exc:
        pytest.fail(f"decode_click raised {exc!r} for {value!r}; it must return Rejected")
    assert reason_of(result) == "invalid_field"


@pytest.mark.parametrize(
    "timestamp",
    [True, False, "1700000000", None, [NOW], {"s": NOW}],
    ids=["true", "false", "string", "null", "list", "object"],
)
def test_non_numeric_or_bool_timestamp_is_invalid_field(timestamp: Any) -> None:
    assert reason_of(decode_obj({**GOOD, "timestamp": timestamp})) == "invalid_field"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_timestamp_is_rejected(literal: bytes) -> None:
    # orjson refuses NaN/Infinity literals and overflowing numbers while parsing, so a
    # non-finite timestamp never reaches the field check: the reason is invalid_json.
    value = b'{"user_id": "u1", "item_id": "i1", "timestamp": ' + literal + b"}"
    assert reason_of(decode(value)) == "invalid_json"


@pytest.mark.parametrize(
    "timestamp",
    [
        NOW + MAX_FUTURE_SKEW_S + 1,
        1e13,  # milliseconds mistaken for seconds
        MIN_EVENT_TIME - 1,  # before 1990
        0,
        -1.0,
    ],
    ids=["over_a_day_ahead", "milliseconds", "before_1990", "zero", "negative"],
)
def test_out_of_range_timestamp_is_bad_timestamp(timestamp: float) -> None:
    assert reason_of(decode_obj({**GOOD, "timestamp": timestamp})) == "bad_timestamp"


@pytest.mark.parametrize(
    ("timestamp", "unit"),
    [(NOW * 1e3, "milliseconds"), (int(NOW * 1e6), "microseconds"), (NOW * 1e9, "nanoseconds")],
)
def test_a_timestamp_in_a_smaller_unit_is_told_seconds_are_expected(
    timestamp: float, unit: str
) -> None:
    result = decode_obj({**GOOD, "timestamp": timestamp})
    assert isinstance(result, Rejected) and result.reason == "bad_timestamp"
    assert "epoch seconds" in result.detail
    assert f"it looks like {unit}: send seconds" in result.detail, result.detail


@pytest.mark.parametrize("timestamp", [NOW + 30 * 86_400, MIN_EVENT_TIME - 1, 0, 1e31])
def test_other_out_of_range_timestamps_get_no_unit_guess(timestamp: float) -> None:
    result = decode_obj({**GOOD, "timestamp": timestamp})
    assert isinstance(result, Rejected) and "looks like" not in result.detail


@pytest.mark.parametrize(
    "timestamp", [MIN_EVENT_TIME, NOW + MAX_FUTURE_SKEW_S, NOW - 10 * 365 * 86_400, int(NOW)]
)
def test_timestamp_at_the_edges_of_the_range_is_accepted(timestamp: float) -> None:
    result = decode_obj({**GOOD, "timestamp": timestamp})
    assert isinstance(result, Click)
    assert result.timestamp == float(timestamp)
    assert isinstance(result.timestamp, float)


@pytest.mark.parametrize(
    "context",
    [
        [],
        "k=v",
        None,
        {"nested": {"a": 1}},
        {"list": [1]},
        {"flag": True},
        {"none": None},
        {f"k{i}": i for i in range(MAX_CONTEXT_KEYS + 1)},
    ],
    ids=["list", "string", "null", "nested", "list_value", "bool_value", "null_value", "too_many"],
)
def test_bad_context_is_invalid_field(context: Any) -> None:
    result = decode_obj({**GOOD, "context": context})
    assert reason_of(result) == "invalid_field"
    assert "context" in result.detail  # type: ignore[union-attr]


# --- accepted records -------------------------------------------------------------------


def test_defaults_event_type_click_and_record_timestamp() -> None:
    result = decode_obj(GOOD)
    assert result == Click(user_id="u1", item_id="i1", timestamp=NOW, event_type="click")
    assert result.session_id is None and result.event_id is None  # type: ignore[union-attr]
    assert dict(result.context) == {}  # type: ignore[union-attr]


def test_missing_timestamp_takes_this_records_timestamp() -> None:
    result = decode_click(orjson.dumps(GOOD), record_timestamp=1_234_567_890.5, max_bytes=MAX_BYTES)
    assert isinstance(result, Click)
    assert result.timestamp == 1_234_567_890.5


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_every_known_event_type_is_accepted(event_type: str) -> None:
    result = decode_obj({**GOOD, "event_type": event_type})
    assert isinstance(result, Click)
    assert result.event_type == event_type


def test_optional_fields_are_kept() -> None:
    context = {f"k{i}": i for i in range(MAX_CONTEXT_KEYS - 3)} | {
        "device": "ios",
        "price": 9.5,
        "qty": 2,
    }
    data = {
        **GOOD,
        "timestamp": NOW - 60,
        "event_type": "purchase",
        "session_id": "s1",
        "event_id": "e1",
        "context": context,
        "unknown_extra_field": "ignored",
    }
    result = decode_obj(data)
    assert result == Click(
        user_id="u1",
        item_id="i1",
        timestamp=NOW - 60,
        event_type="purchase",
        session_id="s1",
        event_id="e1",
        context=context,
    )


def test_null_optional_ids_are_treated_as_absent() -> None:
    result = decode_obj({**GOOD, "session_id": None, "event_id": None})
    assert isinstance(result, Click)
    assert result.session_id is None and result.event_id is None


def test_click_to_json_decodes_back_to_the_same_click() -> None:
    click = Click("u1", "i1", NOW - 5, "view", "s1", "e1", {"device": "web", "n": 3})
    assert decode(click.to_json()) == click


# --- generated malformed records --------------------------------------------------------


@pytest.mark.parametrize("max_bytes", [256, MAX_BYTES, 65536])
def test_every_generated_malformed_record_has_its_reason(max_bytes: int) -> None:
    records = malformed_records(max_bytes)
    got = [reason_of(decode(value, max_bytes=max_bytes)) for value, _ in records]
    assert got == [reason for _, reason in records]
    # The generator covers every reason the DLQ documents except invalid_field variants.
    assert {
        "empty",
        "too_large",
        "invalid_json",
        "invalid_utf8",
        "not_an_object",
        "missing_field",
        "invalid_field",
        "bad_timestamp",
    } <= set(got)


# --- the bad-input corpus ---------------------------------------------------------------

CORPUS = bad_input_corpus(65536, now=NOW)


@pytest.mark.parametrize("record", CORPUS, ids=[r.kind for r in CORPUS])
def test_every_corpus_record_gets_its_expected_outcome(record: Any) -> None:
    result = decode_click(record.value, record_timestamp=NOW, max_bytes=65536)
    if record.expect in POLICIES:
        # A repeat or a late click is a valid click: the worker's policy handles it.
        assert isinstance(result, Click)
        assert record.after is not None and record.key == result.user_id.encode()
        before = decode_click(record.after, record_timestamp=NOW, max_bytes=65536)
        assert isinstance(before, Click) and before.user_id == result.user_id
        if record.expect == "duplicate":
            assert result.event_id == before.event_id
        else:
            assert result.event_id != before.event_id
            assert result.timestamp < before.timestamp
    else:
        assert reason_of(result) == record.expect
        assert len(result.detail) <= 200  # type: ignore[union-attr]


def test_the_corpus_covers_every_kind_the_issue_lists() -> None:
    kinds = {r.kind for r in CORPUS}
    assert len(kinds) == len(CORPUS) >= 12
    assert len({r.value for r in CORPUS if r.expect not in POLICIES}) == len(CORPUS) - 2
    assert {
        "invalid_json",
        "non_utf8",
        "empty_value",
        "user_id_number",
        "item_id_list",
        "missing_user_id",
        "unknown_event_type",
        "nan_timestamp",
        "infinity_timestamp",
        "overflow_timestamp",
        "huge_int_timestamp",
        "empty_user_id",
        "huge_user_id",
        "one_mib",
        "twenty_mib",
        "future_timestamp",
        "past_timestamp",
        "nested_context",
        "deeply_nested_value",
        "duplicate_event_id",
        "out_of_order",
    } <= kinds
    sizes = {r.kind: len(r.value) for r in CORPUS}
    assert sizes["one_mib"] == 1 << 20 and sizes["twenty_mib"] == 20 << 20
    assert sizes["just_over_the_limit"] == 65537


def test_the_corpus_needs_a_limit_under_its_one_mib_value() -> None:
    with pytest.raises(ValueError):
        bad_input_corpus(1 << 20, now=NOW)


@pytest.mark.parametrize("depth", [100, 1000, 1023])
@pytest.mark.parametrize("field", ["event_type", "user_id", "timestamp", "context", "session_id"])
def test_deeply_nested_field_is_invalid_not_a_recursion_error(field: str, depth: int) -> None:
    # Bug: the event_type detail was f"{event_type!r}", and repr() of a list nested
    # 1,000 deep raises RecursionError, which crashed the validate agent.
    nested = b"[" * depth + b"]" * depth
    value = b'{"user_id": "u1", "item_id": "i1", "%s": %s}' % (field.encode(), nested)
    assert reason_of(decode(value)) == "invalid_field"


def test_nesting_beyond_the_parser_limit_is_invalid_json() -> None:
    assert reason_of(decode(b"[" * 5000 + b"]" * 5000, max_bytes=10_000)) == "invalid_json"


def test_detail_quotes_a_long_event_type_briefly() -> None:
    result = decode_obj({**GOOD, "event_type": "x" * 3000})
    assert reason_of(result) == "invalid_field"
    assert len(result.detail) < 200  # type: ignore[union-attr]


# --- dead letters -----------------------------------------------------------------------


def test_dead_letter_keeps_the_value_and_names_the_reason() -> None:
    value, headers = dead_letter(b"{oops", Rejected("invalid_json", "bad \udcff"), max_bytes=10)
    assert value == b"{oops"
    assert dict(headers) == {"error": b"invalid_json", "detail": b"bad ?"}


def test_dead_letter_of_an_empty_or_missing_value_is_empty_bytes() -> None:
    for missing in (None, b""):
        value, headers = dead_letter(missing, Rejected("empty", "no value"), max_bytes=10)
        assert value == b"" and dict(headers)["error"] == b"empty"


def test_dead_letter_cuts_a_too_large_value_and_records_its_size() -> None:
    big = b"x" * (20 << 20)
    value, headers = dead_letter(big, Rejected("too_large", "too big"), max_bytes=65536)
    assert value == big[:65536]
    assert dict(headers) == {
        "error": b"too_large",
        "detail": b"too big",
        "value_bytes": str(20 << 20).encode(),
    }


# --- never raises -----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_decode_click_never_raises_on_arbitrary_bytes(value: bytes) -> None:
    result = decode(value, max_bytes=256)
    assert isinstance(result, Click | Rejected)


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_json = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
_valid_id = st.text(min_size=1, max_size=8)
_maybe_valid = _valid_id | _json
# Ids are mostly valid so that the later checks (event_type, timestamp, context) run.
_click_objects = st.fixed_dictionaries(
    {"user_id": _maybe_valid, "item_id": _maybe_valid},
    optional={
        "event_type": st.sampled_from(sorted(EVENT_TYPES)) | _json,
        "timestamp": st.floats(MIN_EVENT_TIME, NOW) | _json,
        "session_id": _maybe_valid,
        "event_id": _maybe_valid,
        "context": st.dictionaries(st.text(max_size=4), _json, max_size=4) | _json,
    },
)


@settings(max_examples=300, deadline=None)
@given(_click_objects)
def test_decode_click_never_raises_on_arbitrary_json_objects(data: dict[str, Any]) -> None:
    # Arbitrary bytes almost never get past the parser; this drives every field check.
    # It fails today for the unhashable-event_type bug above.
    result = decode_obj(data)
    assert isinstance(result, Click | Rejected)


_any_json = st.recursive(
    _json_scalars | st.floats(),  # NaN and infinities too: orjson writes them as null
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_any_json)
def test_decode_click_never_raises_on_arbitrary_json_values(data: Any) -> None:
    result = decode_obj(data)
    assert isinstance(result, Click | Rejected)
    if not isinstance(data, dict):
        assert reason_of(result) == "not_an_object"


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        ["user_id", "item_id", "event_type", "timestamp", "session_id", "event_id", "context"]
    ),
    _any_json,
)
def test_decode_click_never_raises_with_any_json_value_in_any_field(key: str, value: Any) -> None:
    result = decode_obj({**GOOD, "timestamp": NOW, key: value})
    assert isinstance(result, Click | Rejected)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 140), st.binary(min_size=1, max_size=8), st.booleans())
def test_decode_click_never_raises_on_a_corrupted_click(
    at: int, noise: bytes, replace: bool
) -> None:
    # Bytes flipped or spliced into a real click: mostly parse errors, some valid.
    click = Click("u1", "i1", NOW - 5, "view", "s1", "e1", {"device": "web", "n": 3}).to_json()
    at = min(at, len(click))
    value = click[:at] + noise + click[at + (len(noise) if replace else 0) :]
    result = decode(value)
    assert isinstance(result, Click | Rejected)


@settings(max_examples=50, deadline=None)
@given(st.integers(900, 1100), st.sampled_from([b"[", b'{"a":']))
def test_decode_click_never_raises_on_deep_nesting(depth: int, opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    nested = opener * depth + b"1" + closer * depth
    for value in (nested, b'{"user_id": "u1", "item_id": "i1", "event_type": ' + nested + b"}"):
        assert isinstance(decode(value, max_bytes=1 << 20), Click | Rejected)


# --- recommendations --------------------------------------------------------------------


def make_recommendation() -> Recommendation:
    return Recommendation(
        user_id="u1",
        items=(RecommendedItem("i2", 0.75), RecommendedItem("i3", -1.25)),
        model_version="torch-3",
        source_event_id="e1",
        event_time=NOW,
        emitted_at=NOW + 0.5,
    )


def test_recommendation_round_trips_through_json() -> None:
    rec = make_recommendation()
    assert Recommendation.from_json(rec.to_json()) == rec


def test_recommendation_with_no_items_round_trips() -> None:
    rec = Recommendation("u1", (), "m", "e1", NOW, NOW)
    assert Recommendation.from_json(rec.to_json()) == rec


def _broken(**changes: Any) -> bytes:
    data = orjson.loads(make_recommendation().to_json())
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return orjson.dumps(data)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"[]",
        b"null",
        _broken(user_id=...),
        _broken(user_id=42),
        _broken(items=...),
        _broken(items=None),
        _broken(items=[{"score": 1.0}]),
        _broken(items=[{"item_id": "i2"}]),
        _broken(items=[{"item_id": "i2", "score": "high"}]),
        _broken(model_version=None),
        _broken(source_event_id=...),
        _broken(event_time=None),
        _broken(emitted_at=...),
    ],
    ids=[
        "empty",
        "truncated",
        "array",
        "null",
        "no_user",
        "int_user",
        "no_items",
        "null_items",
        "item_without_id",
        "item_without_score",
        "text_score",
        "null_model_version",
        "no_source_event_id",
        "null_event_time",
        "no_emitted_at",
    ],
)
def test_recommendation_from_json_rejects_broken_events(raw: bytes) -> None:
    with pytest.raises(ValueError):
        Recommendation.from_json(raw)


def test_recommendation_from_json_rejects_a_null_item_id() -> None:
    # Bug: item ids go through `str(...)`, so null becomes the item "None" (and 42 the
    # item "42") instead of a ValueError, while user_id is checked to be a string.
    raw = _broken(items=[{"item_id": None, "score": 1.0}])
    with pytest.raises(ValueError):
        parsed = Recommendation.from_json(raw)
        pytest.fail(f"accepted a null item_id as {parsed.items[0].item_id!r}")
