"""The corrections table in stream/kafka/__init__.py stays true: every test it names
exists, and every stream/kafka name it gives as a correction's place resolves."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import stream.kafka

ROOT = Path(__file__).parents[2]
TABLE = stream.kafka.__doc__ or ""


def fields(name: str) -> list[str]:
    """The text of every `name:` field of the table, continuation lines joined."""
    pattern = rf"^    {name}:\s+(.*(?:\n {{13}}\S.*)*)"
    return [" ".join(m.split()) for m in re.findall(pattern, TABLE, re.MULTILINE)]


def test_every_correction_has_each_field() -> None:
    entries = re.findall(r"^[A-Z]\d+  ", TABLE, re.MULTILINE)
    assert len(entries) >= 10
    for name in ("fixes", "cause", "checked", "where", "test"):
        assert len(fields(name)) == len(entries), name


def test_every_named_test_file_exists() -> None:
    paths = {p for text in fields("test") for p in re.findall(r"tests/[\w/]+\.py", text)}
    assert paths
    assert sorted(p for p in paths if not (ROOT / p).is_file()) == []


def test_every_stream_kafka_place_resolves() -> None:
    places = [
        (module, name)
        for text in fields("where")
        for module, name in re.findall(r"(stream/kafka/\w+)\.py:(\w+)", text)
    ]
    assert places
    missing = [
        f"{module}:{name}"
        for module, name in places
        if not hasattr(importlib.import_module(module.replace("/", ".")), name)
    ]
    assert missing == []
