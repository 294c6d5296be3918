"""`streamrec_consumer_lag`: the records each agent input partition has not read yet.

A stand-in for Faust's consumer gives the assignment, the high watermark of the last
fetch response and the last offset handed to a stream; `Housekeeping._report_lag`
must report their difference for the click topics and the item-delta topic (whose
lag is what item freshness owes), and nothing for other topics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from stream.metrics import WorkerMetrics
from stream.settings import Settings
from stream.worker.housekeeping import Housekeeping


@dataclass
class Consumer:
    highwaters: dict[TP, int]
    _read_offset: dict[TP, int | None] = field(default_factory=dict)

    def assignment(self) -> set[TP]:
        return set(self.highwaters)

    def highwater(self, tp: TP) -> int:
        return self.highwaters[tp]


@dataclass
class App:
    consumer: Consumer


def housekeeping_of(settings: Settings, consumer: Consumer) -> Housekeeping:
    unused: Any = None  # _report_lag reads no users, items or publisher
    return Housekeeping(
        App(consumer),
        settings,
        users=unused,
        items=unused,
        publisher=unused,
        metrics=WorkerMetrics(),
    )


def reported(housekeeping: Housekeeping, tps: list[TP]) -> dict[tuple[str, int], float | None]:
    return {
        (tp.topic, tp.partition): housekeeping.metrics.registry.get_sample_value(
            "streamrec_consumer_lag", {"topic": tp.topic, "partition": str(tp.partition)}
        )
        for tp in tps
    }


def lags(settings: Settings, consumer: Consumer) -> dict[tuple[str, int], float | None]:
    housekeeping = housekeeping_of(settings, consumer)
    housekeeping._report_lag()
    return reported(housekeeping, list(consumer.highwaters))


def test_lag_is_reported_for_clicks_by_user_and_item_deltas_only() -> None:
    settings = Settings()
    clicks = TP(settings.clicks_topic, 0)
    by_user = TP(settings.by_user_topic, 1)
    deltas = TP(settings.item_deltas_topic, 2)
    other = TP(settings.recommendations_topic, 0)
    consumer = Consumer({clicks: 10, by_user: 5, deltas: 40, other: 9})
    consumer._read_offset.update({clicks: 9, by_user: None, deltas: 24, other: 0})
    assert lags(settings, consumer) == {
        (clicks.topic, 0): 0.0,  # offset 9 read: the next is 10, the high watermark
        (by_user.topic, 1): 5.0,  # nothing read yet
        (deltas.topic, 2): 15.0,
        (other.topic, 0): None,
    }


def test_a_revoked_partition_leaves_no_lag_behind() -> None:
    # After a rebalance took partition 0 away, its last lag must not stay on /metrics
    # (a dashboard summing the lag would show a backlog nobody is behind on).
    settings = Settings()
    kept, revoked = TP(settings.clicks_topic, 1), TP(settings.clicks_topic, 0)
    consumer = Consumer({kept: 7, revoked: 300})
    housekeeping = housekeeping_of(settings, consumer)
    housekeeping._report_lag()
    assert reported(housekeeping, [kept, revoked]) == {
        (kept.topic, 1): 7.0,
        (revoked.topic, 0): 300.0,
    }
    del consumer.highwaters[revoked]
    housekeeping._report_lag()
    assert reported(housekeeping, [kept, revoked]) == {
        (kept.topic, 1): 7.0,
        (revoked.topic, 0): None,
    }
