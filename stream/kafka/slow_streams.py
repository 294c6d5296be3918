"""Faust's "Stream stopped processing, or is slow" check, told apart from a backlog
(correction K9 in stream/kafka/__init__.py; the hook is in stream/kafka/transport.py).

Every few seconds faust checks each assigned partition, and when records wait there
(high watermark past the fetch position) while its stream has taken none for
`stream_processing_timeout` (300 s), it logs an ERROR, again at every check. A worker
working through a long click backlog is busy on other partitions and reaches the
waiting ones late: one such worker logged 187 of these ERRORs for
`streamrec-item-deltas` while every click was processed (issue 17). Here the verdict
depends on the whole consumer:

- some other partition's stream took a record within the timeout: the worker is
  working, this partition is behind. One WARNING, with the records waiting, per
  partition and stall (a stall ends when the partition's stream takes a record).
- no stream took anything within the timeout: the worker has stopped. faust's ERROR
  stands, repeated at every check as faust does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from faust.types import TP


class Verdict(Enum):
    ERROR = "error"  # nothing moves anywhere: faust's message, as it is
    WARNING = "warning"  # a backlog: say it once for this stall
    QUIET = "quiet"  # a backlog already reported


@dataclass
class SlowStreams:
    """Which of faust's slow-stream reports to log, and how. Not thread-safe: faust
    calls its check on the event loop. `timeout_s` is faust's
    `stream_processing_timeout`."""

    timeout_s: float
    # Per partition, the last-inbound time of the stall already warned about
    # (None: a stall before the stream's first record).
    _warned: dict[TP, float | None] = field(default_factory=dict)

    def judge(self, tp: TP, now: float, inbound: Mapping[TP, float]) -> Verdict:
        """The verdict on faust's report that `tp` is slow at monotonic time `now`,
        given each partition's last-inbound time (faust's `Monitor.stream_inbound_time`).

        >>> slow = SlowStreams(timeout_s=300)
        >>> deltas, clicks = TP("item-deltas", 0), TP("clicks", 0)
        >>> busy = {deltas: 0.0, clicks: 899.0}
        >>> [slow.judge(deltas, 900.0, busy).value for _ in range(2)]
        ['warning', 'quiet']
        >>> slow.judge(deltas, 1300.0, busy).value  # clicks idle too since 899
        'error'
        """
        others_moving = any(
            now - at < self.timeout_s for other, at in inbound.items() if other != tp
        )
        if not others_moving:
            return Verdict.ERROR
        last = inbound.get(tp)
        if tp in self._warned and self._warned[tp] == last:
            return Verdict.QUIET
        self._warned[tp] = last
        return Verdict.WARNING


def backlog_message(tp: TP, waiting: int | None, idle: str, timeout_s: float) -> str:
    """The one WARNING for a partition behind while the worker works elsewhere; `idle`
    says since when its stream has taken nothing."""
    count = "an unknown number of" if waiting is None else f"{waiting:,}"
    return (
        f"{tp}: {count} records waiting; {idle}, while the worker processes other "
        f"partitions: a backlog, not a stop (stream_processing_timeout={timeout_s:g} s; "
        "said once until this stream takes a record)"
    )
