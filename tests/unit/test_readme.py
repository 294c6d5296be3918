"""The README is the user's first contact: its settings table and commands must be true."""

from __future__ import annotations

import re
from pathlib import Path

from stream.settings import describe

README = (Path(__file__).parents[2] / "README.md").read_text()
MAKEFILE = (Path(__file__).parents[2] / "Makefile").read_text()


def test_settings_table_lists_every_setting_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `(STREAMREC_[A-Z0-9_]+)` \| `([^`]*)` \|", README, re.MULTILINE))
    expected = {name: default for name, default, _ in describe()}
    assert rows == expected


def test_the_two_commands_exist_in_the_makefile() -> None:
    for target in ("demo", "test"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", MAKEFILE, re.MULTILINE)


def test_demo_rate_in_readme_matches_the_makefile() -> None:
    rate = re.search(r"streamrec dev --events (\d+) --rate (\d+)", MAKEFILE)
    assert rate is not None
    events, per_second = rate.groups()
    assert f"replays {int(events):,} synthetic clicks" in README
    assert f"at {per_second} events/s" in README


def test_the_kcat_notes_name_the_working_librdkafka_and_partitioner() -> None:
    # Issue 14: Debian's kcat cannot talk to the embedded broker, and librdkafka's
    # default partitioner sends keyed clicks off their user's partition.
    for needed in ("librdkafka 2.16", "Read underflow", "-X partitioner=murmur2_random"):
        assert needed in " ".join(README.split()), needed
