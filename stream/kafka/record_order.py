"""Each partition's records reach the agents in order, none skipped.

Faust's fetch loop drops a record whose offset is below the partition's read offset,
and it raises the read offset for every record it hands on. When a rebalance seeks a
partition back to its committed offset while records fetched before the seek are still
being handed on, those records raise the read offset again and the re-fetched ones are
dropped: nothing processes them until the next rebalance or restart (seen here: 18 of
3,000 clicks without a recommendation after two SIGKILLs, tests/integration/
test_faults.py). Faust also skips buffered records while a rebalance is under way.

`RecordOrder` keeps, per partition, the offset the agents must process next. A record
past it means records were skipped: the partition is sought back to the expected
offset, again every `reseek_s` until it arrives (one seek can be undone by records
already in flight, as above; `due` names the partitions to seek again when no later
record comes to trigger it), and the records past it are refused meanwhile. A record
below it was processed already (a redelivery after a seek) and is refused too.

Pure bookkeeping; the consumer (stream/kafka/transport.py) does the seeking. Input topics
must have no offset gaps (no transactional producers): a missing offset would stall its
partition, and is logged as such.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum


class Verdict(Enum):
    TAKE = "take"  # the expected record: process it
    SEEN = "seen"  # below the expected offset: processed already
    SEEK = "seek"  # past the expected offset: seek back to it now, refuse this one
    WAIT = "wait"  # past it, a seek is under way: refuse this one


@dataclass(slots=True)
class _Gap:
    last_seek: float
    seeks: int


class RecordOrder:
    def __init__(self, reseek_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.reseek_s = reseek_s
        self._clock = clock
        self._expected: dict[Hashable, int | None] = {}
        self._gaps: dict[Hashable, _Gap] = {}

    def reset(self, positions: Mapping[Hashable, int | None]) -> None:
        """After a seek to these positions (the committed offsets; None: unknown, take
        whatever comes first)."""
        for tp, offset in positions.items():
            self._expected[tp] = offset
            self._gaps.pop(tp, None)

    def forget(self, partitions: Iterable[Hashable]) -> None:
        for tp in partitions:
            self._expected.pop(tp, None)
            self._gaps.pop(tp, None)

    def expected(self, tp: Hashable) -> int | None:
        return self._expected.get(tp)

    def seeks(self, tp: Hashable) -> int:
        """Seeks made so far for the current gap of `tp` (0 when it has none)."""
        gap = self._gaps.get(tp)
        return 0 if gap is None else gap.seeks

    def check(self, tp: Hashable, offset: int) -> Verdict:
        want = self._expected.get(tp)
        if want is None or offset == want:
            self._expected[tp] = offset + 1
            self._gaps.pop(tp, None)
            return Verdict.TAKE
        if offset < want:
            return Verdict.SEEN
        now = self._clock()
        gap = self._gaps.get(tp)
        if gap is not None and now - gap.last_seek < self.reseek_s:
            return Verdict.WAIT
        self._gaps[tp] = _Gap(now, 1 if gap is None else gap.seeks + 1)
        return Verdict.SEEK

    def due(self) -> list[tuple[Hashable, int]]:
        """(partition, expected offset) of each gap whose last seek is `reseek_s` old,
        each counted as sought again now."""
        now = self._clock()
        due = []
        for tp, gap in self._gaps.items():
            want = self._expected.get(tp)
            if want is not None and now - gap.last_seek >= self.reseek_s:
                gap.last_seek, gap.seeks = now, gap.seeks + 1
                due.append((tp, want))
        return due
