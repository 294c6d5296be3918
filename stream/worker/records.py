"""What the worker's user table holds per user, and its byte format.

A record is written once per batch per user and read for every user a worker recovers,
so its format is binary: a fixed header, the model state as packed float32, then the
id lists as one JSON array.

    offset  size  field
    0       1     format version (RECORD_FORMAT)
    1       8     context.last_timestamp   float64, little-endian
    9       8     context.clicks           uint64
    17      8     applied                  uint64
    25      4     n = len(context.state)   uint32
    29      4n    context.state            float32 x n
    29+4n   ...   [recent, event_ids, last_recommended] as JSON (version 1), or
                  [recent, event_ids, last_recommended, history] (version 2)

A record with no history (any exclusion policy but `history`) is written as version 1,
so workers from before version 2 read it; one with a history as version 2, which those
workers refuse in one line rather than misread. The first byte tells the formats
apart: every record the JSON format wrote starts with `{`, which is no version number,
so a changelog written before the binary format still loads (`from_bytes`). An unknown
version is refused with `UnknownRecordFormat`, never misread.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import orjson

from model.base import UserContext

#: The version byte `UserRecord.to_bytes` writes for a record with a history; one
#: without is written as version 1.
RECORD_FORMAT = 2
_WITHOUT_HISTORY = 1
_HEADER = struct.Struct("<BdQQI")
_LAST_TIMESTAMP = struct.Struct("<d")
_JSON_START = ord("{")


class UnknownRecordFormat(ValueError):
    """A user record whose version byte this worker does not know (written by a newer
    worker, or not a user record at all)."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    """What the worker's user table holds per user: the model context, the ids of the
    user's most recent applied events (to skip repeats), the items last recommended
    (to score the next click for live quality) and, under the `history` exclusion
    policy, every distinct item the user interacted with, oldest first, at most
    `STREAMREC_HISTORY_MAX` of them (the oldest forgotten first).

    `to_bytes` stores the context's state as float32, the precision the models keep it
    in: a state value that needs float64 comes back rounded to float32.
    """

    context: UserContext
    event_ids: tuple[str, ...] = ()
    last_recommended: tuple[str, ...] = ()
    applied: int = 0  # clicks applied to this user, ever: what a fault test counts
    history: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        context = self.context
        state = context.state
        lists: tuple[tuple[str, ...], ...] = (context.recent, self.event_ids, self.last_recommended)
        version = _WITHOUT_HISTORY
        if self.history:
            lists, version = (*lists, self.history), RECORD_FORMAT
        return b"".join(
            (
                _HEADER.pack(
                    version, context.last_timestamp, context.clicks, self.applied, len(state)
                ),
                np.array(state, dtype="<f4").tobytes() if state else b"",
                orjson.dumps(lists),
            )
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserRecord:
        """Decode either format; UnknownRecordFormat for an unknown version byte,
        ValueError for a record cut short or otherwise malformed."""
        if not raw:
            raise ValueError("empty user record")
        version = raw[0]
        if version == _JSON_START:
            return cls._from_json(raw)
        if version not in (_WITHOUT_HISTORY, RECORD_FORMAT):
            raise UnknownRecordFormat(
                f"user record format version {version} is unknown to this worker, which "
                f"reads versions 1 to {RECORD_FORMAT} and the JSON records before them: a "
                "newer worker wrote it, or it is not a user record"
            )
        try:
            _, last_timestamp, clicks, applied, n = _HEADER.unpack_from(raw)
            end = _HEADER.size + 4 * n
            if len(raw) < end:
                raise ValueError(f"user record cut short: {len(raw)} bytes, state needs {end}")
            state = np.frombuffer(raw, dtype="<f4", count=n, offset=_HEADER.size).tolist()
            lists = orjson.loads(raw[end:])
            history: list[str] = []
            if version == _WITHOUT_HISTORY:
                recent, event_ids, last_recommended = lists
            else:
                recent, event_ids, last_recommended, history = lists
        except (struct.error, orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed user record: {exc}") from exc
        return cls(
            UserContext(tuple(recent), tuple(state), clicks, last_timestamp),
            tuple(event_ids),
            tuple(last_recommended),
            applied,
            tuple(history),
        )

    @classmethod
    def last_timestamp_of(cls, raw: bytes) -> float:
        """`from_bytes(raw).context.last_timestamp`, read without decoding the record: a
        worker reads it for every user it recovers. Falls back to a full decode when a
        JSON record's field is not found."""
        if raw and raw[0] in (_WITHOUT_HISTORY, RECORD_FORMAT) and len(raw) >= _HEADER.size:
            return float(_LAST_TIMESTAMP.unpack_from(raw, 1)[0])
        if raw and raw[0] == _JSON_START:
            # Only the context has this key; an id holding the same text has its quotes
            # escaped in JSON, so the pattern cannot match inside a string.
            start = raw.rfind(b'"last_timestamp":')
            if start >= 0:
                start += len(b'"last_timestamp":')
                ends = [i for i in (raw.find(b",", start), raw.find(b"}", start)) if i >= 0]
                try:
                    return float(raw[start : min(ends)])
                except ValueError:
                    pass
        return cls.from_bytes(raw).context.last_timestamp

    @classmethod
    def _from_json(cls, raw: bytes) -> UserRecord:
        """A record of the JSON format that came before RECORD_FORMAT 1."""
        data = orjson.loads(raw)
        return cls(
            UserContext.from_dict(data["context"]),
            tuple(data["event_ids"]),
            tuple(data.get("last_recommended", ())),
            int(data.get("applied", 0)),
        )


__all__ = ["RECORD_FORMAT", "UnknownRecordFormat", "UserRecord"]
