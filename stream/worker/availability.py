"""Items the catalogue marked unavailable, kept out of every list this worker serves.

Any model, any exclusion policy: a ranked list that holds an unavailable item is
ranked again with that item also excluded, until none is left, so the list is the
model's top k among available items (a model's scores of the other items do not depend
on what a ranking excludes). Unavailable items stay in the model and the index, so an
item that comes back (`available: true`) is served at once with what it learned; and a
list costs a second ranking only when it met an unavailable item, where passing every
unavailable id as an exclusion would widen every index search by all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from model.base import Recommender, Scored, UserContext

Ranked = list[list[Scored]]

# Rankings per list before the survivors are served as they are (fewer than k): each
# round excludes every unavailable item its list met, so it takes an adversarial
# catalogue (more unavailable items near the top than k, each round) to reach it.
MAX_RANKINGS = 4


class Unavailable:
    """The ids marked unavailable (`available: false`) and not made available since."""

    def __init__(self) -> None:
        self.items: set[str] = set()

    def __len__(self) -> int:
        return len(self.items)

    def mark(self, item_id: str, available: bool) -> None:
        if available:
            self.items.discard(item_id)
        else:
            self.items.add(item_id)

    def recommend(
        self, recommender: Recommender, context: UserContext, k: int, exclude: Collection[str]
    ) -> list[Scored]:
        """`recommender.recommend` without unavailable items (through `recommend`
        alone: the click step never calls the batch methods)."""

        def rank(some: Sequence[UserContext], their: Sequence[Collection[str]]) -> Ranked:
            return [recommender.recommend(c, k, e) for c, e in zip(some, their, strict=True)]

        return self._without([context], [exclude], rank)[0]

    def recommend_many(
        self,
        recommender: Recommender,
        contexts: Sequence[UserContext],
        k: int,
        excludes: Sequence[Collection[str]],
    ) -> list[list[Scored]]:
        """`recommender.recommend_many` without unavailable items."""

        def rank(some: Sequence[UserContext], their: Sequence[Collection[str]]) -> Ranked:
            return recommender.recommend_many(some, k, their)

        return self._without(contexts, excludes, rank)

    def _without(
        self,
        contexts: Sequence[UserContext],
        excludes: Sequence[Collection[str]],
        rank: Callable[[Sequence[UserContext], Sequence[Collection[str]]], Ranked],
    ) -> Ranked:
        """`rank(contexts, excludes)` with each list that met an unavailable item
        ranked again with it also excluded."""
        ranked = rank(contexts, excludes)
        if not self.items:
            return ranked
        ranked = list(ranked)
        widened = [set(exclude) for exclude in excludes]
        for _ in range(MAX_RANKINGS - 1):
            again = []
            for i, items in enumerate(ranked):
                met = {s.item_id for s in items if s.item_id in self.items}
                if met:
                    widened[i] |= met
                    again.append(i)
            if not again:
                return ranked
            lists = rank([contexts[i] for i in again], [widened[i] for i in again])
            for i, items in zip(again, lists, strict=True):
                ranked[i] = items
        return [[s for s in items if s.item_id not in self.items] for items in ranked]


__all__ = ["MAX_RANKINGS", "Unavailable"]
