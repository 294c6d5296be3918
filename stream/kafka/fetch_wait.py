"""How long a fetch may wait at the broker: short when caught up, longer when starved.

A consumer's fetch wait (`fetch_max_wait_ms`) is kept short so that a click reaches the
agents within milliseconds (stream/kafka/transport.py, correction 1). Apache Kafka answers a
fetch as soon as it has records, so there the wait only bounds idle polls. The embedded
broker (Tansu) instead gives up when the wait ends, and how long it takes to read grows
with the record batches a partition holds. Measured here: on a partition of 25,000
small batches every fetch at a 10 ms wait came back empty, at its head and at its tail
(1.5-3 s of tries at each offset), while at 40-1000 ms they returned records in
50-800 ms. A worker that fell behind (restarted after SIGKILLs) then never caught up:
the default `make chaos` run stalled with 16-25k clicks per partition unread.

`FetchWait` doubles the wait after a fetch round that returned nothing while a partition
is known to be behind (its high watermark past the fetch position; the broker reports
it even in an empty answer), up to `ceiling_ms`. The cost of a read grows with the
partition, so a wait that works is kept; every `relax_s` without a starved round it is
tried 25% shorter, down to `base_ms`: on the embedded broker an idle fetch is answered
only when its wait ends, so a longer wait is latency. On Apache Kafka a starved round
does not happen and the wait stays at its base.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.kafka import internals

log = logging.getLogger(__name__)


@dataclass(slots=True)
class FetchWait:
    base_ms: int
    ceiling_ms: int = 1000
    relax_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    current_ms: int = 0
    _changed_at: float = 0.0

    def __post_init__(self) -> None:
        if self.base_ms < 0 or self.ceiling_ms < self.base_ms:
            raise ValueError("need 0 <= base_ms <= ceiling_ms")
        self.current_ms = self.current_ms or self.base_ms
        self._changed_at = self.clock()

    def after_round(self, got_records: bool, behind: bool) -> int:
        """The wait for the next fetches, given whether the last round of fetching
        returned any record and whether some partition is still behind its end."""
        now = self.clock()
        if behind and not got_records:
            self.current_ms = min(self.ceiling_ms, max(1, self.current_ms) * 2)
            self._changed_at = now
        elif self.current_ms > self.base_ms and now - self._changed_at >= self.relax_s:
            self.current_ms = max(self.base_ms, self.current_ms * 3 // 4)
            self._changed_at = now
        return self.current_ms


def partitions_behind(consumer: AIOKafkaConsumer, partitions: Any = None) -> list[Any]:
    """The assigned partitions (of `partitions`, if given) whose fetch position is
    below the high watermark of the last fetch response: records wait there."""
    assignment = internals.assignment(consumer)
    if assignment is None:
        return []
    behind = []
    for tp in list(partitions) if partitions is not None else list(assignment.tps):
        tp = TopicPartition(tp.topic, tp.partition)
        highwater = consumer.highwater(tp)
        if highwater is None or tp not in assignment.tps:
            continue
        state = assignment.state_value(tp)
        if state.has_valid_position and state.position < highwater:
            behind.append(tp)
    return behind


def adapt_fetch_wait(
    consumer: AIOKafkaConsumer, wait: FetchWait, got_records: bool, partitions: Any = None
) -> None:
    """Set the wait of `consumer`'s next fetches from the last round (`FetchWait`).
    Does not block; logs each change of the wait."""
    before = wait.current_ms
    after = wait.after_round(got_records, bool(partitions_behind(consumer, partitions)))
    if after != before:
        (log.warning if after == wait.ceiling_ms else log.info)(
            "fetch wait %d -> %d ms (%s)",
            before,
            after,
            "partitions behind, fetches empty" if after > before else "trying a shorter wait",
        )
    internals.set_fetch_wait(consumer, after)
