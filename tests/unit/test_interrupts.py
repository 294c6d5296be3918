"""A Ctrl-C whose KeyboardInterrupt Python swallows (raised inside a `__del__`) still
stops `replay` at its next record (stream/interrupts.py)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from stream import interrupts
from stream.kafka.producer import replay


class Producer:
    """The part of KafkaProducer that `replay` uses."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, topic: str, **record: Any) -> None:
        self.sent += 1

    def flush(self) -> None:
        pass


class InterruptedWhileCollected:
    """Ctrl-C arrives while this object is being finalised, so the KeyboardInterrupt
    is raised inside `__del__`, where Python reports and drops it."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


def records(interrupt_at: int) -> Iterator[dict[str, Any]]:
    for i in range(100):
        if i == interrupt_at:
            InterruptedWhileCollected()  # collected at once: refcount 0
        yield {"user_id": f"u{i}", "item_id": "a"}


def replay_with(producer: Producer) -> None:
    replay(
        records(interrupt_at=10),
        bootstrap_servers="unused:9092",
        topic="clicks",
        progress=False,
        producer=producer,  # type: ignore[arg-type]
    )


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(interrupts, "_interrupted", threading.Event())
    previous = signal.getsignal(signal.SIGINT)
    interrupts.install()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_swallowed_ctrl_c_still_stops_replay(installed: None) -> None:
    producer = Producer()
    with pytest.raises(KeyboardInterrupt):
        replay_with(producer)
    assert producer.sent == 10  # the records before the interrupt, none after


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_without_the_check_the_swallowed_ctrl_c_is_lost(
    installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the check is for: with it disabled, replay sends every record."""
    import stream.kafka.producer as producer_module

    monkeypatch.setattr(producer_module, "raise_if_interrupted", lambda: None)
    producer = Producer()
    replay_with(producer)
    assert producer.sent == 100


def test_ctrl_c_still_raises_keyboard_interrupt_at_once(installed: None) -> None:
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        interrupts.raise_if_interrupted()
