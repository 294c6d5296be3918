"""Wire types of the three topics and the one place that decodes and validates clicks.

`decode_click` never raises on bad input: it returns a `Rejected` with a short machine
reason (the DLQ `error` header) and a human detail, so the agent routes it, never crashes.
`dead_letter` is the DLQ record a rejected value becomes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from model.base import EVENT_TYPES

MAX_ID_CHARS = 256
# Every `Rejected.reason` decode_click returns: the DLQ `error` header and the label
# values of streamrec_events_rejected_total, which the metrics pre-create.
REJECT_REASONS = (
    "empty",
    "too_large",
    "invalid_json",
    "invalid_utf8",
    "not_an_object",
    "missing_field",
    "invalid_field",
    "bad_timestamp",
)
MAX_CONTEXT_KEYS = 64
# Event times more than a day ahead of the record's own timestamp are clock errors;
# times before 1990 are unit or default-value errors (MovieLens starts in 1995).
MAX_FUTURE_SKEW_S = 86_400.0
MIN_EVENT_TIME = 631_152_000.0
# A rejection's detail quotes at most this much of the input: it is a header, and the
# input may be 64 KB of one string or a value nested 1,000 deep (whose repr() raises).
MAX_DETAIL_CHARS = 200


@dataclass(frozen=True, slots=True)
class Click:
    """A validated click; `timestamp` is event time in epoch seconds."""

    user_id: str
    item_id: str
    timestamp: float
    event_type: str = "click"
    session_id: str | None = None
    event_id: str | None = None
    context: Mapping[str, str | float | int] = field(default_factory=dict)

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "user_id": self.user_id,
            "item_id": self.item_id,
            "timestamp": self.timestamp,
            "event_type": self.event_type,
        }
        if self.session_id is not None:
            data["session_id"] = self.session_id
        if self.event_id is not None:
            data["event_id"] = self.event_id
        if self.context:
            data["context"] = dict(self.context)
        return orjson.dumps(data)


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a record was refused: `reason` is the DLQ `error` header, `detail` the text."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class RecommendedItem:
    item_id: str
    score: float


@dataclass(frozen=True, slots=True)
class Recommendation:
    user_id: str
    items: tuple[RecommendedItem, ...]
    model_version: str
    source_event_id: str
    event_time: float
    emitted_at: float
    #: The A/B variant that served the list (STREAMREC_VARIANTS); None outside an
    #: experiment, when the event has no `variant` field.
    variant: str | None = None

    def to_json(self) -> bytes:
        return encode_recommendation(
            self.user_id,
            self.items,
            self.model_version,
            self.source_event_id,
            self.event_time,
            self.emitted_at,
            self.variant,
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Recommendation:
        """Parse a recommendation event; raises ValueError if it breaks the contract."""
        data = orjson.loads(raw)
        try:
            items = tuple(
                RecommendedItem(_require_str(i, "item_id"), float(i["score"]))
                for i in data["items"]
            )
            return cls(
                user_id=_require_str(data, "user_id"),
                items=items,
                model_version=_require_str(data, "model_version"),
                source_event_id=_require_str(data, "source_event_id"),
                event_time=float(data["event_time"]),
                emitted_at=float(data["emitted_at"]),
                variant=None if data.get("variant") is None else _require_str(data, "variant"),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a recommendation event: {exc!r}") from exc


class _Ranked(Protocol):
    """A ranked item as the model returns it (`model.base.Scored`) or as an event holds
    it (`RecommendedItem`)."""

    @property
    def item_id(self) -> str: ...
    @property
    def score(self) -> float: ...


def encode_recommendation(
    user_id: str,
    items: Iterable[_Ranked],
    model_version: str,
    source_event_id: str,
    event_time: float,
    emitted_at: float,
    variant: str | None = None,
) -> bytes:
    """A recommendation event's value, byte for byte what `Recommendation.to_json`
    writes, straight from the model's ranked items (no event object built). `variant`
    is written only when given (an experiment), so events outside one are unchanged."""
    event = {
        "user_id": user_id,
        "items": [{"item_id": i.item_id, "score": i.score} for i in items],
        "model_version": model_version,
        "source_event_id": source_event_id,
        "event_time": event_time,
        "emitted_at": emitted_at,
    }
    if variant is not None:
        event["variant"] = variant
    return orjson.dumps(event)


def _require_str(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string")
    return value


def decode_click(
    value: bytes | None, *, record_timestamp: float, max_bytes: int
) -> Click | Rejected:
    """Decode one `clicks` record value. Never raises; bad input becomes `Rejected`.

    `record_timestamp` (the Kafka record time, epoch seconds) is the event time when the
    payload has none, and the reference for rejecting event times far in the future.
    """
    data = decode_object(value, max_bytes=max_bytes)
    if isinstance(data, Rejected):
        return data
    for key in ("user_id", "item_id"):
        if key not in data:
            return Rejected("missing_field", f"{key} is required")
        problem = id_problem(data[key])
        if problem:
            return Rejected("invalid_field", f"{key} {problem}")
    event_type = data.get("event_type", "click")
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        return Rejected(
            "invalid_field",
            f"event_type must be one of {sorted(EVENT_TYPES)}, not {describe_value(event_type)}",
        )
    timestamp = epoch_seconds(
        data.get("timestamp", record_timestamp), "timestamp", reference=record_timestamp
    )
    if isinstance(timestamp, Rejected):
        return timestamp
    optional: dict[str, str | None] = {}
    for key in ("session_id", "event_id"):
        raw = data.get(key)
        if raw is not None:
            problem = id_problem(raw)
            if problem:
                return Rejected("invalid_field", f"{key} {problem}")
        optional[key] = raw
    context = data.get("context", {})
    problem = _context_problem(context)
    if problem:
        return Rejected("invalid_field", f"context {problem}")
    return Click(
        user_id=data["user_id"],
        item_id=data["item_id"],
        timestamp=timestamp,
        event_type=event_type,
        session_id=optional["session_id"],
        event_id=optional["event_id"],
        context=context,
    )


# The units a producer most often sends by mistake, by how many of them make a second.
_SMALLER_UNITS = (("milliseconds", 1e3), ("microseconds", 1e6), ("nanoseconds", 1e9))


def decode_object(value: bytes | None, *, max_bytes: int) -> dict[str, Any] | Rejected:
    """The JSON object a record value holds, or why it holds none (`empty`,
    `too_large`, `invalid_json`, `invalid_utf8`, `not_an_object`). Never raises."""
    if value is None or len(value) == 0:
        return Rejected("empty", "record has no value")
    if len(value) > max_bytes:
        return Rejected("too_large", f"value is {len(value)} bytes; the limit is {max_bytes}")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        # orjson rejects invalid UTF-8 and NaN/Infinity literals here too.
        reason = "invalid_utf8" if "utf-8" in str(exc).lower() else "invalid_json"
        return Rejected(reason, str(exc)[:MAX_DETAIL_CHARS])
    if not isinstance(data, dict):
        return Rejected("not_an_object", f"value is a JSON {type(data).__name__}, not an object")
    return data


def epoch_seconds(value: Any, name: str, *, reference: float) -> float | Rejected:
    """`value` as an event time in epoch seconds, or why it is not one: not a finite
    number (`invalid_field`), or before 1990 or more than a day after `reference`
    (`bad_timestamp`, with a hint when it looks like milliseconds and the like)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return Rejected("invalid_field", f"{name} must be epoch seconds (a number)")
    seconds = float(value)
    if not math.isfinite(seconds):
        return Rejected("invalid_field", f"{name} must be finite")
    if seconds < MIN_EVENT_TIME or seconds > reference + MAX_FUTURE_SKEW_S:
        return Rejected("bad_timestamp", _timestamp_problem(seconds, reference, name))
    return seconds


def _timestamp_problem(timestamp: float, record_timestamp: float, name: str) -> str:
    detail = (
        f"{name} {timestamp} is out of the accepted range: epoch seconds from 1990 "
        "to a day after the record's time"
    )
    for unit, per_second in _SMALLER_UNITS:
        if MIN_EVENT_TIME <= timestamp / per_second <= record_timestamp + MAX_FUTURE_SKEW_S:
            return f"{detail}; it looks like {unit}: send seconds (divide by {per_second:.0f})"
    return detail


def id_problem(value: Any) -> str | None:
    """Why `value` is not an id (a string of 1 to MAX_ID_CHARS characters), or None."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_CHARS:
        return f"is {len(value)} characters; the limit is {MAX_ID_CHARS}"
    return None


def _context_problem(context: Any) -> str | None:
    if not isinstance(context, dict):
        return "must be an object"
    if len(context) > MAX_CONTEXT_KEYS:
        return f"has {len(context)} keys; the limit is {MAX_CONTEXT_KEYS}"
    for key, value in context.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return f"value of {describe_value(key)} must be a string or a number"
        if isinstance(value, float) and not math.isfinite(value):
            return f"value of {describe_value(key)} must be finite"
    return None


def describe_value(value: Any) -> str:
    """A short, safe description of an untrusted value for a rejection's detail: a
    string's first characters, a number, or else only its JSON type (never a repr of
    a container, which may be huge or too deeply nested to print)."""
    if isinstance(value, str):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    if value is None or isinstance(value, bool | int | float):
        return repr(value)[:40]
    return f"a JSON {'array' if isinstance(value, list) else 'object'}"


def dead_letter(
    value: bytes | None, rejected: Rejected, *, max_bytes: int
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The DLQ record for a rejected value: (value, headers).

    The value is kept as it came, up to `max_bytes`; a longer one (reason `too_large`)
    keeps only its first `max_bytes` bytes and gets a `value_bytes` header with its
    size, because a 20 MB value would not fit the producer's request limit and a
    too-large record cannot be replayed anyway. Headers: `error` (the reason),
    `detail` (UTF-8, at most a few hundred bytes), and `value_bytes` when cut.
    """
    value = value or b""
    headers = [
        ("error", rejected.reason.encode()),
        ("detail", rejected.detail[: 2 * MAX_DETAIL_CHARS].encode("utf-8", "replace")),
    ]
    if len(value) > max_bytes:
        headers.append(("value_bytes", str(len(value)).encode()))
        value = value[:max_bytes]
    return value, headers
