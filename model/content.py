"""What an item *is* (its title, text, categories, an upstream embedding), as the model
sees it: the port through which a catalogue reaches a recommender.

A model that is `ContentAware` maps an item's content into its item-embedding space
(a content vector): a new item's row starts from that vector, so the item can be
recommended before its first click (cold start). The mapping is the model's own and
learned online; see its implementation for the rule. Pure Python and NumPy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True, slots=True)
class ItemContent:
    """An item's content, already validated by the caller. `embedding` is a vector
    computed upstream (e.g. by a language model) of the dimension the deployment
    declares, or None."""

    title: str = ""
    text: str = ""
    categories: tuple[str, ...] = ()
    embedding: tuple[float, ...] | None = None

    def is_empty(self) -> bool:
        return not (self.title or self.text or self.categories or self.embedding)


@runtime_checkable
class ContentAware(Protocol):
    """A recommender that takes item content."""

    def set_content(self, contents: Mapping[str, ItemContent]) -> None:
        """Remember each item's content, replacing what was known of it: rows created
        from now on for these items start from their content vectors, and the model
        learns its content mapping from the items that have both content and clicks.
        Does not create rows or touch any index."""
        ...

    def content_vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The current content vector (float32, the item-embedding dimension) of each
        of `item_ids` whose content is known; the others are left out."""
        ...


__all__ = ["ContentAware", "ItemContent"]
