"""Catalogue files (what each item is) as `ItemContent` by item id, for `streamrec
evaluate --protocol cold-start --items FILE` and `streamrec train --items FILE`: the
records `stream.catalogue.read_catalogue` reads and validates, as the worker would take
them from the items topic (formats and errors are that reader's). A repeated id keeps
its last row."""

from __future__ import annotations

from pathlib import Path

from model.content import ItemContent
from stream.catalogue import CATALOGUE_FORMATS, read_catalogue

__all__ = ["CATALOGUE_FORMATS", "read_catalogue_file"]


def read_catalogue_file(path: str | Path, fmt: str) -> dict[str, ItemContent]:
    """Every item's content in the file at `path`, by item id; `DatasetError` (a
    ValueError) naming the file and line for a bad one."""
    return {item.item_id: item.content() for item in read_catalogue(path, fmt)}
