"""RecordOrder: each partition's records in order, none skipped (stream/kafka/record_order.py)."""

from __future__ import annotations

from stream.kafka.record_order import RecordOrder, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_records_in_order_are_taken() -> None:
    order = RecordOrder()
    order.reset({"p": 5})
    assert [order.check("p", o) for o in (5, 6, 7)] == [Verdict.TAKE] * 3
    assert order.expected("p") == 8


def test_an_unknown_position_takes_the_first_record_it_sees() -> None:
    order = RecordOrder()
    assert order.check("p", 40) is Verdict.TAKE
    assert order.check("p", 41) is Verdict.TAKE
    order.reset({"p": None})
    assert order.check("p", 3) is Verdict.TAKE


def test_a_redelivered_record_is_seen() -> None:
    order = RecordOrder()
    order.reset({"p": 0})
    order.check("p", 0)
    order.check("p", 1)
    assert order.check("p", 1) is Verdict.SEEN
    assert order.check("p", 0) is Verdict.SEEN
    assert order.expected("p") == 2


def test_a_gap_seeks_back_then_waits_then_seeks_again_until_the_record_comes() -> None:
    clock = Clock()
    order = RecordOrder(reseek_s=1.0, clock=clock)
    order.reset({"p": 10})
    assert order.check("p", 13) is Verdict.SEEK  # 10..12 were skipped
    assert order.check("p", 14) is Verdict.WAIT  # refused; the seek is under way
    clock.now = 0.5
    assert order.check("p", 15) is Verdict.WAIT
    clock.now = 1.2  # records in flight undid the seek: seek again
    assert order.check("p", 16) is Verdict.SEEK
    assert order.seeks("p") == 2
    assert order.expected("p") == 10  # nothing past the gap was taken
    assert [order.check("p", o) for o in (10, 11, 12, 13)] == [Verdict.TAKE] * 4
    assert order.seeks("p") == 0


def test_partitions_are_independent_and_forgotten_on_revocation() -> None:
    order = RecordOrder()
    order.reset({"a": 0, "b": 100})
    assert order.check("a", 0) is Verdict.TAKE
    assert order.check("b", 101) is Verdict.SEEK
    assert order.check("a", 1) is Verdict.TAKE
    order.forget(["b"])
    assert order.expected("b") is None
    assert order.check("b", 500) is Verdict.TAKE


def test_a_gap_nothing_else_arrives_for_is_due_for_another_seek() -> None:
    clock = Clock()
    order = RecordOrder(reseek_s=1.0, clock=clock)
    order.reset({"p": 10, "q": 0})
    assert order.check("p", 12) is Verdict.SEEK
    assert order.due() == []  # just sought
    clock.now = 1.5  # the stream has ended: no record comes to trigger a seek
    assert order.due() == [("p", 10)]
    assert order.due() == []  # counted as sought again now
    assert order.seeks("p") == 2
    assert order.check("p", 10) is Verdict.TAKE
    clock.now = 5.0
    assert order.due() == []
