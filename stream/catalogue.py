"""Wire type of the `items` (catalogue) topic, the one place that decodes and validates
it, and the readers of catalogue files that `streamrec produce --items` sends.

The topic is compacted and keyed by item id, so a record is the item's *whole* state:
a field left out takes its default, never the previous record's value (compaction keeps
only the latest record of each key). `decode_item` never raises: bad input becomes a
`Rejected` with the same machine reasons as clicks (stream/events.py), which the worker
routes to the items dead-letter topic with `dead_letter`.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from model.content import ItemContent
from stream.events import (
    REJECT_REASONS,
    Rejected,
    decode_object,
    describe_value,
    epoch_seconds,
    id_problem,
)
from stream.offline.datasets import DatasetError

# Every `Rejected.reason` decode_item returns: the click reasons fit catalogue records
# too (an embedding of the wrong length is an `invalid_field`), so the DLQ headers and
# the rejection metrics' labels mean the same on both topics.
CATALOGUE_REJECT_REASONS = REJECT_REASONS
MAX_TITLE_CHARS = 1_000
MAX_TEXT_CHARS = 20_000
MAX_CATEGORIES = 64
# The largest magnitude a float32 holds: the model keeps embeddings as float32, where
# a larger finite JSON number would become infinity.
MAX_EMBEDDING_VALUE = 3.4028234663852886e38
EMBEDDING_DIM_VARIABLE = "STREAMREC_ITEM_EMBEDDING_DIM"
CATALOGUE_FORMATS = ("movielens", "csv")


@dataclass(frozen=True, slots=True)
class CatalogueItem:
    """A validated catalogue record: what an item is and whether it may be recommended.

    `updated_at` is epoch seconds (the producer's time of the change), `embedding` a
    vector computed upstream of the deployment's STREAMREC_ITEM_EMBEDDING_DIM.
    """

    item_id: str
    title: str = ""
    text: str = ""
    categories: tuple[str, ...] = ()
    available: bool = True
    updated_at: float | None = None
    embedding: tuple[float, ...] | None = None

    def content(self) -> ItemContent:
        """The item's content as the model takes it (`model.content.ContentAware`)."""
        return ItemContent(self.title, self.text, self.categories, self.embedding)

    def has_content(self) -> bool:
        """Whether the record says what the item is (a title, text, categories or an
        embedding), not only whether it is available."""
        return not self.content().is_empty()

    def to_json(self) -> bytes:
        """The record's value; `decode_item` reads it back to an equal item."""
        data: dict[str, Any] = {
            "item_id": self.item_id,
            "title": self.title,
            "text": self.text,
            "categories": list(self.categories),
            "available": self.available,
        }
        if self.updated_at is not None:
            data["updated_at"] = self.updated_at
        if self.embedding is not None:
            data["embedding"] = list(self.embedding)
        return orjson.dumps(data)


def decode_item(
    value: bytes | None,
    *,
    max_bytes: int,
    embedding_dim: int,
    record_timestamp: float | None = None,
) -> CatalogueItem | Rejected:
    """Decode one `items` record value. Never raises; bad input becomes `Rejected`.

    `embedding_dim` is STREAMREC_ITEM_EMBEDDING_DIM: an `embedding` must have exactly
    that many numbers, and with 0 none is accepted. `record_timestamp` (epoch seconds,
    default: now) is the reference for refusing an `updated_at` far in the future.
    A null value (a tombstone) is `empty`: withdraw an item with `available: false`.
    """
    data = decode_object(value, max_bytes=max_bytes)
    if isinstance(data, Rejected):
        return data
    reference = time.time() if record_timestamp is None else record_timestamp
    return item_from_object(data, embedding_dim=embedding_dim, reference=reference)


def item_from_object(
    data: dict[str, Any], *, embedding_dim: int, reference: float
) -> CatalogueItem | Rejected:
    """A decoded JSON object as a `CatalogueItem`, or why it is not one. A field that
    is null counts as left out; unknown fields are ignored."""
    if "item_id" not in data:
        return Rejected("missing_field", "item_id is required")
    problem = id_problem(data["item_id"])
    if problem:
        return Rejected("invalid_field", f"item_id {problem}")
    fields = {key: value for key, value in data.items() if value is not None}
    title = fields.get("title", "")
    text = fields.get("text", "")
    for key, value, limit in (("title", title, MAX_TITLE_CHARS), ("text", text, MAX_TEXT_CHARS)):
        if not isinstance(value, str):
            return Rejected("invalid_field", f"{key} must be a string, not {describe_value(value)}")
        if len(value) > limit:
            return Rejected(
                "invalid_field", f"{key} is {len(value)} characters; the limit is {limit}"
            )
    categories = _categories(fields.get("categories", []))
    if isinstance(categories, Rejected):
        return categories
    available = fields.get("available", True)
    if not isinstance(available, bool):
        return Rejected(
            "invalid_field", f"available must be true or false, not {describe_value(available)}"
        )
    updated_at = (
        epoch_seconds(fields["updated_at"], "updated_at", reference=reference)
        if "updated_at" in fields
        else None
    )
    if isinstance(updated_at, Rejected):
        return updated_at
    embedding = _embedding(fields["embedding"], embedding_dim) if "embedding" in fields else None
    if isinstance(embedding, Rejected):
        return embedding
    return CatalogueItem(
        item_id=data["item_id"],
        title=title,
        text=text,
        categories=categories,
        available=available,
        updated_at=updated_at,
        embedding=embedding,
    )


def _categories(value: Any) -> tuple[str, ...] | Rejected:
    if not isinstance(value, list):
        return Rejected(
            "invalid_field", f"categories must be a list of strings, not {describe_value(value)}"
        )
    if len(value) > MAX_CATEGORIES:
        return Rejected(
            "invalid_field", f"categories has {len(value)} entries; the limit is {MAX_CATEGORIES}"
        )
    for n, category in enumerate(value):
        problem = id_problem(category)  # a category follows the id rules: 1-256 characters
        if problem:
            return Rejected("invalid_field", f"categories[{n}] {problem}")
    return tuple(value)


def _embedding(value: Any, dim: int) -> tuple[float, ...] | Rejected:
    if dim == 0:
        return Rejected(
            "invalid_field",
            f"embedding given, but {EMBEDDING_DIM_VARIABLE} is 0 (embeddings not accepted); "
            "set it to the embeddings' dimension",
        )
    if not isinstance(value, list):
        return Rejected(
            "invalid_field", f"embedding must be a list of numbers, not {describe_value(value)}"
        )
    if len(value) != dim:
        return Rejected(
            "invalid_field",
            f"embedding has {len(value)} numbers; {EMBEDDING_DIM_VARIABLE} is {dim}",
        )
    for n, number in enumerate(value):
        if isinstance(number, bool) or not isinstance(number, int | float):
            return Rejected(
                "invalid_field", f"embedding[{n}] must be a number, not {describe_value(number)}"
            )
        if not abs(number) <= MAX_EMBEDDING_VALUE:  # orjson already refuses NaN, Infinity
            return Rejected("invalid_field", f"embedding[{n}] {number:g} does not fit a float32")
    return tuple(float(number) for number in value)


# --- catalogue files --------------------------------------------------------------------

MOVIELENS_COLUMNS = ["movieId", "title", "genres"]
MOVIELENS_NO_GENRES = "(no genres listed)"
CSV_COLUMNS = ("item_id", "title", "text", "categories", "available", "updated_at")
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def read_catalogue(path: str | Path, fmt: str) -> Iterator[CatalogueItem]:
    """The items of a catalogue file, in file order. Formats:

    - `movielens`: `movies.csv` (`movieId,title,genres`; genres split on `|`,
      `(no genres listed)` is none).
    - `csv`: a header with `item_id` and any of `title`, `text`, `categories` (split on
      `|`), `available` (true/false/1/0, empty: true) and `updated_at` (epoch seconds).

    Each row is validated as `decode_item` validates a record (no embeddings). A missing
    file or unknown format raises DatasetError (a ValueError) here; a bad row raises it
    while iterating, naming the file, the line and the problem.
    """
    path = Path(path)
    if fmt not in CATALOGUE_FORMATS:
        raise DatasetError(
            f"unknown catalogue format {fmt!r}; choose one of {', '.join(CATALOGUE_FORMATS)}"
        )
    if not path.is_file():
        raise DatasetError(f"no catalogue file at {path}")
    return _read(path, _movielens_row if fmt == "movielens" else _csv_row, fmt)


def _read(
    path: Path, to_object: Callable[[dict[str, str]], dict[str, Any]], fmt: str
) -> Iterator[CatalogueItem]:
    reference = time.time()
    line = 1
    try:
        # utf-8-sig: a spreadsheet's UTF-8 export starts with a byte-order mark.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            _check_header(path, fmt, reader.fieldnames)
            for row in reader:
                line = reader.line_num
                if None in row or None in row.values():
                    more = "more" if None in row else "fewer"
                    raise ValueError(f"the row has {more} fields than the header")
                item = item_from_object(to_object(row), embedding_dim=0, reference=reference)
                if isinstance(item, Rejected):
                    raise ValueError(item.detail)
                yield item
    except UnicodeDecodeError:
        raise DatasetError(f"{path} is not UTF-8 text (save it as UTF-8)") from None
    except DatasetError:
        raise
    except (ValueError, csv.Error) as exc:
        raise DatasetError(f"{path}, line {line}: {exc}") from None


def _check_header(path: Path, fmt: str, header: Any) -> None:
    if fmt == "movielens":
        if header != MOVIELENS_COLUMNS:
            raise DatasetError(
                f"{path} is not a MovieLens movies.csv: its header is {_header(header)}, "
                f"expected {','.join(MOVIELENS_COLUMNS)}"
            )
        return
    columns = list(header or [])
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if "item_id" not in columns or unknown:
        problem = f"unknown columns {', '.join(unknown)}" if unknown else "no item_id column"
        raise DatasetError(
            f"{path}: the header has {problem}; a catalogue csv has item_id and any of "
            f"{', '.join(CSV_COLUMNS[1:])}"
        )


def _header(header: Any) -> str:
    return ",".join(header) if header else "missing (an empty file)"


def _split(categories: str) -> list[str]:
    return [part.strip() for part in categories.split("|") if part.strip()]


def _movielens_row(row: dict[str, str]) -> dict[str, Any]:
    genres = row["genres"].strip()
    return {
        "item_id": row["movieId"],
        "title": row["title"],
        "categories": [] if genres == MOVIELENS_NO_GENRES else _split(genres),
    }


def _csv_row(row: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "item_id": row["item_id"],
        "title": row.get("title", ""),
        "text": row.get("text", ""),
        "categories": _split(row.get("categories", "")),
    }
    available = row.get("available", "").strip().lower()
    if available:
        if available not in _BOOLEANS:
            raise ValueError(f"available must be true, false, 1 or 0, not {available!r}")
        data["available"] = _BOOLEANS[available]
    updated_at = row.get("updated_at", "").strip()
    if updated_at:
        try:
            data["updated_at"] = float(updated_at)
        except ValueError:
            raise ValueError(f"updated_at must be epoch seconds, not {updated_at!r}") from None
    return data


__all__ = [
    "CATALOGUE_FORMATS",
    "CATALOGUE_REJECT_REASONS",
    "CatalogueItem",
    "decode_item",
    "item_from_object",
    "read_catalogue",
]
