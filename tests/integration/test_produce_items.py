"""`streamrec produce --items` publishes a catalogue over the real broker: one record per
item, keyed by its id, that `decode_item` reads back (issue 15); and its errors."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from stream.catalogue import CatalogueItem, decode_item
from stream.dev.services import DevStack, free_port
from stream.kafka.topics import ensure_topics
from stream.settings import Settings
from tests.conftest import read_topic
from tests.integration.test_cli import streamrec

pytestmark = pytest.mark.integration

MOVIES = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
2,"American President, The (1995)",Comedy|Drama|Romance
3,Pirates of Silicon Valley (1999),(no genres listed)
"""
EXPECTED = {
    "1": CatalogueItem(
        "1",
        "Toy Story (1995)",
        categories=("Adventure", "Animation", "Children", "Comedy", "Fantasy"),
    ),
    "2": CatalogueItem(
        "2", "American President, The (1995)", categories=("Comedy", "Drama", "Romance")
    ),
    "3": CatalogueItem("3", "Pirates of Silicon Valley (1999)"),
}


@pytest.fixture()
def items_topic(dev_stack: DevStack) -> str:
    topic = f"items-{uuid.uuid4().hex[:8]}"
    ensure_topics(dev_stack.bootstrap_servers, [topic], partitions=4)
    return topic


def decoded(dev_stack: DevStack, topic: str, count: int) -> list[tuple[str, int, object]]:
    """(key, partition, decoded value) of the topic's first `count` records."""
    settings = Settings(bootstrap_servers=dev_stack.bootstrap_servers)
    records = read_topic(settings, topic, until=count, timeout_s=15)
    return [
        (r.key.decode(), r.partition, decode_item(r.value, max_bytes=65_536, embedding_dim=0))
        for r in records
    ]


def test_a_movielens_catalogue_lands_keyed_by_item_id_and_decodes_back(
    dev_stack: DevStack, items_topic: str, tmp_path: Path
) -> None:
    movies = tmp_path / "movies.csv"
    movies.write_text(MOVIES)
    env = {**os.environ, "STREAMREC_ITEMS_TOPIC": items_topic}  # the setting names the topic
    done = streamrec(
        "produce", "--bootstrap-servers", dev_stack.bootstrap_servers,
        "--items", str(movies), "--format", "movielens", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["items_sent"] == 3 and summary["topic"] == items_topic

    records = decoded(dev_stack, items_topic, 3)
    assert {key: item for key, _, item in records} == EXPECTED
    assert len(records) == 3

    # The item's next record (withdrawn) lands on the same partition: a compacted topic
    # keeps only the latest per key, so a key must always mean its item.
    catalogue = tmp_path / "withdrawn.csv"
    catalogue.write_text("item_id,title,available\n2,American President,false\n")
    done = streamrec(
        "produce", "--bootstrap-servers", dev_stack.bootstrap_servers,
        "--items", str(catalogue), "--topic", items_topic,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["items_sent"] == 1
    first, *_, last = [r for r in decoded(dev_stack, items_topic, 4) if r[0] == "2"]
    assert last[2] == CatalogueItem("2", "American President", available=False)
    assert first[1] == last[1]


@pytest.mark.parametrize("flag", ["--items", "--item-count"])
def test_the_synthetic_item_count_keeps_its_older_flag(
    dev_stack: DevStack, tmp_path: Path, flag: str
) -> None:
    topic = f"clicks-{uuid.uuid4().hex[:8]}"
    ensure_topics(dev_stack.bootstrap_servers, [topic], partitions=1)
    done = streamrec(
        "produce", "--bootstrap-servers", dev_stack.bootstrap_servers, "--topic", topic,
        "--generate", "200", flag, "3",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["events_sent"] == 200
    settings = Settings(bootstrap_servers=dev_stack.bootstrap_servers)
    clicks = [json.loads(r.value) for r in read_topic(settings, topic, until=200, timeout_s=15)]
    assert len(clicks) == 200
    assert {click["item_id"] for click in clicks} <= {"i0", "i1", "i2"}


def test_catalogue_errors_are_one_line_without_a_traceback(tmp_path: Path) -> None:
    # No broker at this port: a file's problem is reported before any connection.
    unreachable = f"127.0.0.1:{free_port()}"
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,title,available\na,A,true\nb,B,maybe\n")
    cases = [
        (["--items", str(tmp_path / "nope.csv")], 1, f"no catalogue file at {tmp_path}/nope.csv"),
        (["--items", str(bad)], 1, f"{bad}, line 3: available must be true, false, 1 or 0"),
        (["--items", str(bad), "--format", "session-rec"], 1, "unknown catalogue format"),
        (["--items", str(bad), "--generate", "5"], 2, "the synthetic item count is --item-count"),
        (["--items", str(bad), "--file", str(bad)], 2, "give one source"),
        ([], 2, "give one source"),
    ]
    for flags, code, message in cases:
        done = streamrec("produce", "--bootstrap-servers", unreachable, *flags)
        assert done.returncode == code, (flags, done.stderr)
        assert message in done.stderr, (flags, done.stderr)
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr

    good = tmp_path / "good.csv"
    good.write_text("item_id,title\na,A\n")
    done = streamrec("produce", "--bootstrap-servers", unreachable, "--items", str(good))
    assert done.returncode == 1
    assert f"Kafka broker unreachable at {unreachable}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
