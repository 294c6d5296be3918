"""Item vectors across workers, on the wire: the codec of the item-deltas and
item-vectors records, and `VectorFollower`, which reads every broadcast vector into this
worker (the protocol: stream/items/__init__.py).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import orjson

from stream.items.ledger import CanonicalVector, ItemDelta
from stream.kafka.follower import TopicFollower
from stream.security import PLAINTEXT, KafkaSecurity

log = logging.getLogger(__name__)


def _vector_out(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def _vector_in(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def encode_deltas(deltas: Sequence[ItemDelta]) -> bytes:
    return orjson.dumps(
        [
            {
                "item_id": d.item_id,
                "source": d.source,
                "offset": d.offset,
                "delta": _vector_out(d.delta),
                "latest": _vector_out(d.latest),
                "before": None if d.before is None else _vector_out(d.before),
                "clicked_at": d.clicked_at,
                "model": d.model,
            }
            for d in deltas
        ]
    )


def decode_deltas(raw: bytes) -> list[ItemDelta]:
    """Raises ValueError on a record that is not ours."""
    try:
        return [
            ItemDelta(
                d["item_id"],
                d["source"],
                int(d["offset"]),
                _vector_in(d["delta"]),
                _vector_in(d["latest"]),
                d.get("clicked_at"),
                None if d.get("before") is None else _vector_in(d["before"]),
                str(d.get("model", "")),
            )
            for d in orjson.loads(raw)
        ]
    except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not an item-delta record: {exc!r}") from exc


def encode_vectors(entries: Iterable[CanonicalVector]) -> bytes:
    return orjson.dumps(
        [
            {
                "item_id": e.item_id,
                "vector": _vector_out(e.vector),
                "version": e.version,
                "applied": dict(e.applied),
                "clicked_at": e.clicked_at,
                "events": e.events,
                "model": e.model,
            }
            for e in entries
        ]
    )


def decode_vectors(raw: bytes) -> list[CanonicalVector]:
    """Raises ValueError on a record that is not ours."""
    try:
        return [
            CanonicalVector(
                e["item_id"],
                _vector_in(e["vector"]),
                int(e["version"]),
                dict(e["applied"]),
                e.get("clicked_at"),
                int(e.get("events", 0)),
                str(e.get("model", "")),
            )
            for e in orjson.loads(raw)
        ]
    except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not an item-vectors record: {exc!r}") from exc


class VectorFollower(TopicFollower):
    """Reads every broadcast item vector, from the beginning of every partition of the
    item-vectors topic, and hands each record's vectors to `on_vectors` (a record that
    is not ours is logged and skipped). Caught up as `TopicFollower` says (I1)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        partitions: int,
        on_vectors: Callable[[list[CanonicalVector]], None],
        *,
        fetch_max_wait_ms: int = 10,
        idle_caught_up_s: float = 1.0,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        super().__init__(
            bootstrap_servers,
            topic,
            partitions,
            self._take,
            what="item vectors",
            fetch_max_wait_ms=fetch_max_wait_ms,
            idle_caught_up_s=idle_caught_up_s,
            security=security,
        )
        self.on_vectors = on_vectors

    def _take(self, _key: bytes | None, value: bytes | None) -> None:
        try:
            vectors = decode_vectors(value or b"")
        except ValueError as exc:
            log.error("unreadable item-vectors record skipped: %s", exc)
            return
        self.on_vectors(vectors)
