"""Readers of catalogue files (what each item is) into `ItemContent` by item id, for
`streamrec evaluate --protocol cold-start --items FILE`.

Formats:
- `movielens`: `movies.csv` (movieId,title,genres with a header); the genres, split on
  `|`, are the categories (`(no genres listed)` is none); the title keeps its year in
  parentheses, which the content encoder reads as a word.
- `csv`: a header with `item_id,title,text,categories` (`text` and `categories`
  optional); categories split on `|`.

A bad file raises `DatasetError` naming the file and line; a repeated id keeps its last
row. Whatever else reads a catalogue (the wire-level reader in stream/ for the live
worker) may reuse `read_catalogue_file`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from model.content import ItemContent
from stream.offline.datasets import DatasetError

CATALOGUE_FORMATS = ("movielens", "csv")
_NO_GENRES = "(no genres listed)"


def read_catalogue_file(path: str | Path, fmt: str) -> dict[str, ItemContent]:
    """Every item's content in the file at `path`, by item id."""
    path = Path(path)
    if fmt not in CATALOGUE_FORMATS:
        raise DatasetError(
            f"unknown catalogue format {fmt!r}; choose one of {', '.join(CATALOGUE_FORMATS)}"
        )
    if not path.is_file():
        raise DatasetError(f"no catalogue file at {path}")
    contents: dict[str, ItemContent] = {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            for item_id, content in _ROWS[fmt](reader):
                contents[item_id] = content
    except (KeyError, ValueError, TypeError, csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not a {fmt} catalogue file: {exc}") from exc
    return contents


def _split(categories: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in (categories or "").split("|") if c.strip())


def _movielens(reader: csv.DictReader[str]) -> Iterator[tuple[str, ItemContent]]:
    for row in reader:
        genres = tuple(g for g in _split(row["genres"]) if g != _NO_GENRES)
        yield (
            _id(row["movieId"], reader),
            ItemContent(title=row["title"].strip(), categories=genres),
        )


def _csv(reader: csv.DictReader[str]) -> Iterator[tuple[str, ItemContent]]:
    for row in reader:
        yield (
            _id(row["item_id"], reader),
            ItemContent(
                title=(row.get("title") or "").strip(),
                text=(row.get("text") or "").strip(),
                categories=_split(row.get("categories")),
            ),
        )


def _id(value: str | None, reader: csv.DictReader[str]) -> str:
    item_id = (value or "").strip()
    if not item_id:
        raise ValueError(f"line {reader.line_num}: no item id")
    return item_id


_ROWS = {"movielens": _movielens, "csv": _csv}
