"""A pretrained sentence encoder for item text: fills `ItemContent.embedding` so the
content encoder (model/content_encoder.py) learns its projection from a language
model's view of the item as well as from hashed words.

The encoder is WordLlama (the optional `content` extra, pyproject.toml): a static
256-d encoder whose weights and tokenizer ship inside its wheel. It is loaded from the
installed package with downloads disabled, so nothing is fetched at run time.
NumPy only; wordllama is imported on first use.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from typing import Any

from model.content import ItemContent

#: The dimension of every embedding `embed_contents` writes.
WORDLLAMA_DIM = 256
CONTENT_EXTRA = "content"
# Items embedded per call: wordllama pads each batch to its longest text.
_BATCH = 256


class MissingTextEncoder(ImportError):
    """wordllama is not installed; the message is the one line to print."""


def embed_contents(
    contents: Mapping[str, ItemContent], what: str = "the wordllama item encoder"
) -> dict[str, ItemContent]:
    """`contents` with each item's `embedding` replaced by the unit-length WordLlama
    embedding of its text (title, categories, text); items with no text keep theirs.
    The input is not modified. MissingTextEncoder (naming `what`) without wordllama."""
    encoder = _load_wordllama(what)
    ids = [item_id for item_id, content in contents.items() if item_text(content)]
    out = dict(contents)
    for start in range(0, len(ids), _BATCH):
        batch = ids[start : start + _BATCH]
        vectors = encoder.embed([item_text(contents[i]) for i in batch], norm=True)
        for item_id, vector in zip(batch, vectors, strict=True):
            out[item_id] = replace(contents[item_id], embedding=tuple(vector.tolist()))
    return out


def item_text(content: ItemContent) -> str:
    """The one string an item is embedded from: title, categories, then text."""
    parts = [content.title, " ".join(content.categories), content.text]
    return ". ".join(part for part in parts if part.strip())


def _load_wordllama(what: str) -> Any:
    try:
        import wordllama
    except ImportError as exc:
        raise MissingTextEncoder(
            f"{what} needs wordllama, from the {CONTENT_EXTRA} extra: "
            f"pip install 'streamrec[{CONTENT_EXTRA}]'"
        ) from exc
    return _installed_wordllama(pathlib.Path(wordllama.__file__).parent)


@lru_cache(maxsize=1)
def _installed_wordllama(package_dir: pathlib.Path) -> Any:
    from wordllama import WordLlama

    # Plain WordLlama.load() fetches the tokenizer; the package directory holds both
    # the weights and the tokenizer config, so loading from it needs no network.
    return WordLlama.load(cache_dir=package_dir, disable_download=True, dim=WORDLLAMA_DIM)


__all__ = ["WORDLLAMA_DIM", "MissingTextEncoder", "embed_contents", "item_text"]
