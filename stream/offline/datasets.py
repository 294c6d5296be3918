"""Readers of interaction files into click payloads, in event-time order.

Formats:
- `session-rec`: tab-separated with a header `SessionId ItemId Time` (epoch seconds);
  a session is the user.
- `movielens`: `ratings.csv` (userId,movieId,rating,timestamp with a header) or
  `u.data` (tab-separated user item rating timestamp, no header).
- `csv`: a header with `user_id,item_id,timestamp`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FORMATS = ("session-rec", "movielens", "csv")


class DatasetError(ValueError):
    """The file is missing or not in the format asked for; the message says where."""


def read_interactions(path: str | Path, fmt: str) -> list[dict[str, Any]]:
    """All rows as wire payloads sorted by timestamp (stable, so file order breaks ties)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise DatasetError(f"no dataset file at {path}")
    try:
        rows = list(_READERS[fmt](path))
    except (KeyError, ValueError, TypeError, IndexError, csv.Error, UnicodeDecodeError) as exc:
        # TypeError: csv.DictReader fills a short row's missing columns with None.
        raise DatasetError(f"{path} is not a {fmt} file: {exc}") from exc
    rows.sort(key=lambda row: row["timestamp"])
    return rows


def _session_rec(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            session = row["SessionId"]
            yield {
                "user_id": session,
                "item_id": row["ItemId"],
                "timestamp": float(row["Time"]),
                "session_id": session,
            }


def _movielens(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(newline="") as handle:
        first = handle.readline()
        if first.startswith("userId"):
            reader: Any = csv.reader(handle)
        else:
            handle.seek(0)
            reader = (line.split("\t") for line in handle if line.strip())
        for fields in reader:
            user, item, _rating, timestamp = fields[:4]
            yield {"user_id": user, "item_id": item, "timestamp": float(timestamp)}


def _generic_csv(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            yield {
                "user_id": row["user_id"],
                "item_id": row["item_id"],
                "timestamp": float(row["timestamp"]),
            }


_READERS = {"session-rec": _session_rec, "movielens": _movielens, "csv": _generic_csv}
