"""The admin topic's records: what `streamrec model load/rollback` asks every worker to
serve (stream/worker/swap.py carries it out), and the commands' topic side.

A record holds the whole wanted stack of checkpoints, newest last; an empty stack is
the workers' startup model. So the topic's last record is the state, the topic can be
compacted (one key), and a rollback is the stack without its top.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import orjson

from stream.kafka.consumer import make_consumer
from stream.kafka.producer import make_producer
from stream.security import KafkaSecurity

#: The key of every admin record: compaction keeps the last, which is the state.
RECORD_KEY = b"model"


@dataclass(frozen=True, slots=True)
class Wanted:
    """One checkpoint of the wanted stack: its path and, if given, its SHA-256."""

    path: str
    sha256: str | None = None


def encode_stack(stack: list[Wanted]) -> bytes:
    """An admin record asking every worker to serve `stack`'s top (empty: the startup
    model)."""
    return orjson.dumps(
        {
            "checkpoints": [{"path": w.path, "sha256": w.sha256} for w in stack],
            "id": uuid.uuid4().hex,
            "at": time.time(),
        }
    )


def decode_stack(raw: bytes | None) -> list[Wanted]:
    """The stack an admin record asks for; ValueError for a record that is not one."""
    try:
        data = orjson.loads(raw or b"")
        stack = [Wanted(str(c["path"]), c.get("sha256") or None) for c in data["checkpoints"]]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a model command: {exc!r}") from exc
    return stack


def read_stack(bootstrap_servers: str, topic: str, *, security: KafkaSecurity) -> list[Wanted]:
    """The stack the admin topic's last readable record asks for (empty if none)."""
    consumer = make_consumer(bootstrap_servers, [topic], idle_timeout_s=1.0, security=security)
    stack: list[Wanted] = []
    try:
        for record in consumer:
            try:
                stack = decode_stack(record.value)
            except ValueError:
                continue  # the workers skip it too
    finally:
        consumer.close()
    return stack


def write_stack(
    bootstrap_servers: str, topic: str, stack: list[Wanted], *, security: KafkaSecurity
) -> None:
    """Ask every worker to serve `stack`'s top; returns once the broker has it."""
    producer = make_producer(bootstrap_servers, security=security)
    try:
        producer.send(topic, key=RECORD_KEY, value=encode_stack(stack), partition=0).get(timeout=30)
    finally:
        producer.close()


__all__ = ["RECORD_KEY", "Wanted", "decode_stack", "encode_stack", "read_stack", "write_stack"]
