"""Faust's aiokafka transport, with seven corrections (K1-K6 and K9 in the corrections
table of stream/kafka/__init__.py, with their tests).

1. A configurable consumer fetch wait. faust-streaming 0.15 hard-codes
   `fetch_max_wait_ms=1500`. Apache Kafka answers a waiting fetch as soon as data
   arrives, so there that only bounds idle polls; the embedded broker (Tansu) answers
   only when the wait ends, which put 0.4-1.5 s into every click's latency (measured:
   p50 410 ms at 1500, 5.6 ms at 10 with aiokafka alone). So the wait is a setting,
   `STREAMREC_FETCH_MAX_WAIT_MS`.
2. Commits cover only records an agent acknowledged after processing them. While a
   rebalance is under way a Faust stream *skips* the records still in its buffer, and
   acknowledges them as it skips (streams.py, `value is skipped_value`; the compiled
   iterator does it inline). The revocation then commits past them, and if their
   partition moves to another worker nobody ever processes them: with a second worker
   joining mid-stream, 4-74 of 1,500 clicks were lost per run
   (tests/integration/test_rebalance.py). Faust also lets a commit skip one offset
   at the head (`min(acked) - committed > 1`). Here a commit advances over the first
   run of consecutive offsets acknowledged through `Consumer.ack` (which is how an
   agent's `stream.ack` arrives, and what a skip does not call), from the committed
   offset on.
3. Table recovery reads the changelog to its true end. Recovery stops at the end offsets
   that ListOffsets reports, and the embedded broker reports the base offset of the
   last record batch plus one (docs/embedded-broker.md), not the offset after its last
   record. A
   worker taking over a partition then rebuilt its user records without the changelog's
   last batch and applied later clicks to older records: 5 of 3,000 clicks were missing
   from the final user records after two SIGKILLs (tests/integration/test_faults.py).
   Here the end offsets are checked by fetching the last batch: the answer is never
   lower than the broker's, so on Apache Kafka, which reports them right, nothing
   changes.
4. Agents get each partition's records in order with none skipped (`admit`, with the
   bookkeeping in stream/kafka/record_order.py): Faust can drop re-fetched records after a
   rebalance's seek, which left them unprocessed until the next restart.
5. The fetch wait of (1) grows while partitions are behind and fetches come back empty,
   and returns to the setting once caught up (stream/kafka/fetch_wait.py): the embedded broker
   gives up on a fetch when its wait ends, before it has read records far behind the
   end of a large partition, and a worker that fell behind never caught up.
6. A recovery seek with no start offset (a rebalance during recovery) reads from the
   start instead of crashing the worker (`seek_wait`).
9. Faust's "Stream stopped processing, or is slow" ERROR, logged at every check for a
   partition that waits while the worker works through a backlog elsewhere, becomes
   one WARNING with the records waiting (stream/kafka/slow_streams.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers import aiokafka as driver
from faust.types import TP
from faust.utils.functional import consecutive_numbers

from stream.kafka import internals
from stream.kafka.fetch_wait import FetchWait, adapt_fetch_wait
from stream.kafka.record_order import RecordOrder, Verdict
from stream.kafka.slow_streams import SlowStreams, backlog_message
from stream.kafka.slow_streams import Verdict as SlowVerdict

log = logging.getLogger(__name__)

__all__ = [
    "StreamrecApp",
    "StreamrecConsumer",
    "StreamrecConsumerThread",
    "StreamrecTransport",
    "streamrec_app",
    "true_end_offsets",
]


def streamrec_app(app_id: str, *, fetch_max_wait_ms: int, **faust_options: Any) -> StreamrecApp:
    """A faust.App with the corrections above, whose Kafka consumer waits at most
    `fetch_max_wait_ms` per fetch while caught up. `faust_options` go to faust.App."""
    return StreamrecApp(app_id, fetch_max_wait_ms=fetch_max_wait_ms, **faust_options)


class StreamrecApp(faust.App):
    """faust.App on `StreamrecTransport`; `fetch_max_wait_ms` is correction 1's
    setting, read by the consumer thread when it builds its aiokafka consumer."""

    def __init__(self, app_id: str, *, fetch_max_wait_ms: int, **faust_options: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms  # before faust builds anything
        super().__init__(app_id, **faust_options)

    def _new_transport(self) -> Any:
        return StreamrecTransport(self.conf.broker_consumer, self)


class StreamrecConsumerThread(driver.AIOKafkaConsumerThread):
    """The thread running the aiokafka consumer: corrections 1, 3, 5 and 9."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fetch_wait = FetchWait(self._configured_fetch_wait_ms())
        self.slow_streams = SlowStreams(self.app.conf.stream_processing_timeout)

    def _log_slow_processing_stream(self, msg: str, *args: Any) -> None:
        # Correction 9: faust's verify_event_path calls this for a partition with
        # records waiting whose stream took none for stream_processing_timeout.
        tp, since = args
        now = time.monotonic()  # faust's Monitor stamps inbound times with monotonic()
        inbound = self.app.monitor.stream_inbound_time
        verdict = self.slow_streams.judge(tp, now, inbound)
        if verdict is SlowVerdict.ERROR:
            super()._log_slow_processing_stream(msg, *args)
        elif verdict is SlowVerdict.WARNING:
            idle = (
                f"its stream took its last record {since}"
                if msg == driver.SLOW_PROCESSING_STREAM_IDLE
                else f"its stream has taken none since the worker started {since}"
            )
            waiting = self._records_waiting(tp)
            log.warning(backlog_message(tp, waiting, idle, self.slow_streams.timeout_s))

    def _records_waiting(self, tp: TP) -> int | None:
        """Records of `tp` past the last one handed to its stream, or None if unknown."""
        try:
            highwater = self.consumer.highwater(tp)
        except Exception:  # no aiokafka consumer (yet): the count is only for a log line
            return None
        read = internals.read_offsets(self.consumer).get(tp)
        if highwater is None:
            return None
        return max(0, highwater - (read + 1 if read is not None else 0))

    def _configured_fetch_wait_ms(self) -> int:
        return cast(StreamrecApp, self.app).fetch_max_wait_ms

    def _create_worker_consumer(self, transport: Any) -> Any:
        # Correction 1: faust-streaming 0.15.3 hard-codes fetch_max_wait_ms=1500.
        consumer = super()._create_worker_consumer(transport)
        internals.set_initial_fetch_wait(consumer, self._configured_fetch_wait_ms())
        return consumer

    async def _fetch_records(
        self,
        consumer: AIOKafkaConsumer,
        active_partitions: Any,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        records = await super()._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=max_records
        )
        if self.consumer.flow_active:  # else nothing was fetched (a rebalance)
            # Correction 5: a longer wait while partitions are behind and starved.
            adapt_fetch_wait(consumer, self.fetch_wait, bool(records), active_partitions)
        return records

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        # Correction 3: recovery reads changelogs up to these end offsets.
        reported = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return reported
        corrected = await true_end_offsets(lambda: internals.new_client_consumer(self), reported)
        return cast(Mapping[TP, int], corrected)


class StreamrecConsumer(driver.Consumer):
    """faust's aiokafka consumer: corrections 2 (commits), 4 (record order) and 6
    (recovery seeks). `admit`, `reseek_stalled` and `diagnostic_state` are its public
    additions, for the worker."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # Per partition, offsets acknowledged through `ack` and not yet committed.
        self.processed_offsets: dict[TP, list[int]] = {}
        self.record_order = RecordOrder()

    def _new_consumer_thread(self) -> Any:
        return StreamrecConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def ack(self, message: Any) -> bool:
        recorded = bool(super().ack(message))
        if recorded:
            self.processed_offsets.setdefault(message.tp, []).append(message.offset)
        return recorded

    def _new_offset(self, tp: TP) -> int | None:
        """Correction 2: the offset to commit for `tp`, or None for no commit. Advances
        over the first run of consecutive processed offsets from the committed one,
        and never past a record still in flight."""
        processed = self.processed_offsets.get(tp)
        if not processed:
            return None
        processed.sort()
        committed = internals.committed_offsets(self)[tp]
        if committed is not None and processed[0] > committed:
            return None  # the next record to commit has not been processed yet
        run = list(next(consecutive_numbers(processed)))
        # A record handed to a stream and not yet acknowledged bounds the commit too.
        # It matters when nothing is committed yet (a new group; Faust also keeps
        # offset 0 as None): the head is then unknown, and a slow first record with
        # later ones acknowledged was committed past (faust-streaming issue 606,
        # tests/regression/test_faust_606_slow_head_not_committed_past.py).
        in_flight = [
            m.offset
            for m in internals.unacked_messages(self)
            if m.tp == tp and not m.acked and (committed is None or m.offset >= committed)
        ]
        if in_flight:
            first = min(in_flight)
            if first <= run[0]:
                return None
            run = [o for o in run if o < first]
        del processed[: len(run)]
        offset = int(run[-1]) + 1
        # Forget Faust's own bookkeeping up to here (it includes skipped records).
        internals.forget_acked_below(self, tp, offset)
        return offset

    async def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            self.processed_offsets.pop(tp, None)
        self.record_order.forget(revoked)
        await super().on_partitions_revoked(revoked)

    async def seek_wait(self, partitions: Mapping[TP, int | None]) -> None:
        """Correction 6. Faust's recovery seeks the changelog partitions it reads to
        their start offsets. When a rebalance lands during recovery, partitions it adds
        have no start offset built yet (None), and aiokafka's seek raised ValueError,
        which crashed the worker (`make chaos`, once in 10 kills). None (or a negative
        offset) means "from the start" here, as a fresh start reads it."""
        fixed = {
            tp: 0 if offset is None or offset < 0 else offset for tp, offset in partitions.items()
        }
        unknown = sorted(tp for tp, offset in partitions.items() if offset != fixed[tp])
        if unknown:
            log.info("recovery gave no start offset for %s: reading from 0", unknown)
        await super().seek_wait(fixed)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        # Every stream starts again at the committed offsets (the read offsets now).
        read = internals.read_offsets(self)
        self.record_order.reset({tp: read.get(tp) for tp in self.assignment()})

    async def admit(self, message: Any) -> bool:
        """Correction 4: whether an agent may process `message` now, only if it is the
        next record of its partition. Seeks the partition back when records before it
        were skipped (stream/kafka/record_order.py). Never acks; the caller acks what
        it processed."""
        verdict = self.record_order.check(message.tp, message.offset)
        if verdict is Verdict.SEEK:
            want = self.record_order.expected(message.tp)
            seeks = self.record_order.seeks(message.tp)
            (log.warning if seeks > 3 else log.info)(
                "%s: got offset %d, expected %s: seeking back (seek %d)",
                message.tp,
                message.offset,
                want,
                seeks,
            )
            await self.seek(message.tp, want)  # type: ignore[arg-type]
        return verdict is Verdict.TAKE

    async def reseek_stalled(self) -> None:
        """Seek again every partition whose skipped records have not come back a
        while after the last seek. Call it periodically: when the stream has ended,
        no later record arrives to trigger the seek in `admit`."""
        assigned = self.assignment()
        for tp, want in self.record_order.due():
            if tp in assigned:
                log.warning("%s: offset %d still missing: seeking back again", tp, want)
                await self.seek(tp, want)

    def diagnostic_state(self) -> dict[str, Any]:
        """Where each assigned partition stands, for stream/worker/diagnostics.py:
        Faust's fetch bookkeeping, the commit and order state kept here, and the fetch
        position of the aiokafka consumer underneath (read across threads: a snapshot
        for a person, not for decisions). Raises ConsumerNotStarted before the
        consumer thread has started."""
        inner = internals.aiokafka_consumer(internals.consumer_thread(self))
        read = internals.read_offsets(self)
        committed = internals.committed_offsets(self)
        partitions = {}
        for tp in sorted(self.assignment()):
            partitions[f"{tp.topic}[{tp.partition}]"] = {
                **internals.partition_flags(self, tp),
                "read_offset": read.get(tp),
                "committed": committed.get(tp),
                "highwater": self.highwater(tp),
                "expected": self.record_order.expected(tp),
                "seeks": self.record_order.seeks(tp),
                "acked_not_committed": len(self.processed_offsets.get(tp, ())),
                "fetch_position_paused": internals.fetch_position(inner, tp),
            }
        return {
            "flow_active": self.flow_active,
            "unacked": len(internals.unacked_messages(self)),
            "partitions": partitions,
            "fetcher": internals.fetcher_state(inner),
        }


class StreamrecTransport(driver.Transport):
    Consumer = StreamrecConsumer


async def true_end_offsets(
    make_probe: Callable[[], AIOKafkaConsumer],
    reported: Mapping[TP, int | None],
    timeout_s: float = 10.0,
) -> dict[TP, int | None]:
    """`reported` end offsets corrected by reading each partition's last batch with a
    consumer without a group from `make_probe`, made only when some partition is not
    empty, and started and stopped here: for each partition,
    the larger of the reported end, the offset after the last record fetched from
    `reported - 1`, and the fetch response's high watermark. Partitions reported empty,
    or that return nothing within `timeout_s`, keep the reported figure."""
    ends = dict(reported)
    wanted = {TopicPartition(tp.topic, tp.partition): tp for tp, end in ends.items() if end}
    if not wanted:
        return ends
    probe = make_probe()
    try:
        await probe.start()
        probe.assign(list(wanted))
        for partition, tp in wanted.items():
            probe.seek(partition, ends[tp] - 1)  # type: ignore[operator]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        pending = set(wanted)
        while pending and loop.time() < deadline:
            fetched = await probe.getmany(*pending, timeout_ms=200)
            for partition, records in fetched.items():
                if not records:
                    continue
                tp = wanted[partition]
                highwater = probe.highwater(partition) or 0
                ends[tp] = max(ends[tp] or 0, records[-1].offset + 1, highwater)
                pending.discard(partition)
    finally:
        await probe.stop()
    return ends
