"""The torch model's content side (issue 15, cold start): content vectors for new rows,
the mapping learned from clicks, and candidates for items nobody has clicked yet.

Present only once content is set: without it the model has no `ContentSide` and every
path is the one it had before content existed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from model.base import ItemChange, Scored, UserContext
from model.content import ItemContent
from model.content_encoder import ContentEncoder
from model.index import ExactIndex

if TYPE_CHECKING:
    from model.baselines import RecentPopularity
    from model.torch_model.blocks import Block, FeatureLayout
    from model.torch_model.encoder import GruEncoder

# The feature values of a candidate without any click evidence, as blocks.py computes
# them from zero counts.
_NO_VOTE = math.log(1e-4)


class ContentSide:
    """Content for the torch model's items.

    - A new row of an item with content starts at its content vector plus the random
      draw every new row gets (the generator's sequence stays the one without content,
      and items of identical content still differ); the click gradients then move it.
    - After every click, each changed row of an item with content teaches `encoder`
      its new vector (the encoder states its rule), so content vectors follow what
      clicks teach rows.
    - Cold items (content, no row yet) are candidates: the `candidates` best by
      inner product of their content vector with the user's h, from an index of every
      cold item refreshed every `refresh_every` clicks (and after `set_content`).
      Between refreshes it serves the vectors of the last refresh; `vectors` always
      computes from the current mapping.
    - Two mixer features for every candidate: content similarity to the user's last
      `profile` items, and whether it is cold (blocks.FeatureLayout).

    Not thread-safe.
    """

    def __init__(
        self,
        encoder: ContentEncoder,
        items: GruEncoder,
        *,
        candidates: int = 20,
        refresh_every: int = 1000,
        profile: int = 10,
    ) -> None:
        self.encoder = encoder
        self.items = items
        self.candidates = candidates
        self.refresh_every = refresh_every
        self.profile = profile
        self._cold = ExactIndex(encoder.dim)
        self._warmed: set[str] = set()  # in `_cold` but given a row since the refresh
        self._since_refresh = 0
        self._stale = True

    def set_content(self, contents: Mapping[str, ItemContent]) -> None:
        self.encoder.set_content(contents)
        self._stale = True

    def vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        known = [item_id for item_id in item_ids if item_id in self.encoder]
        if not known:
            return {}
        return dict(zip(known, self.encoder.vectors(known), strict=True))

    def start(self, item_id: str) -> np.ndarray | None:
        """Where a new row of `item_id` starts before its random draw: its content
        vector, or None without content."""
        if item_id not in self.encoder:
            return None
        start: np.ndarray = self.encoder.vectors([item_id])[0]
        return start

    def is_cold(self, item_id: str) -> bool:
        return item_id in self.encoder and item_id not in self.items.rows

    def learn(self, changes: Mapping[str, ItemChange]) -> None:
        """After one click: learn from the changed rows that have content."""
        taught = [item_id for item_id in changes if item_id in self.encoder]
        if taught:
            self.encoder.learn(taught, np.stack([changes[i].after for i in taught]))
            self._warmed.update(i for i in taught if i in self._cold)
        self._since_refresh += 1

    def _index(self) -> ExactIndex:
        """The cold items' index, rebuilt when due."""
        if self._stale or self._since_refresh >= self.refresh_every:
            cold = [i for i in self.encoder.contents if i not in self.items.rows]
            self._cold = ExactIndex(self.encoder.dim, capacity=max(1, len(cold)))
            if cold:
                self._cold.upsert(cold, self.encoder.vectors(cold))
            self._warmed, self._since_refresh, self._stale = set(), 0, False
        return self._cold

    def cold_top(self, query: np.ndarray | None, k: int, exclude: Collection[str]) -> list[Scored]:
        """The best k cold items for `query` (all tied without one), `exclude` left out."""
        index = self._index()
        vector = np.zeros(index.dim, dtype=np.float32) if query is None else query
        return index.search(vector, k, self._warmed.union(exclude))

    def extend(
        self,
        block: Block,
        contexts: Sequence[UserContext],
        hs: Sequence[torch.Tensor],
        excludes: Sequence[Collection[str]],
        alsos: Sequence[str],
        layout: FeatureLayout,
        popularity: RecentPopularity,
    ) -> Block:
        """`block` with each user's cold candidates appended (row -1) and the content
        columns filled for every candidate."""
        from model.torch_model.blocks import Block

        index = self._index()
        rows, ids, features, bounds = [], [], [], [0]
        for u, (context, h) in enumerate(zip(contexts, hs, strict=True)):
            mine = block.of(u)
            warm_ids = block.ids[mine]
            query = h.numpy()
            found = index.search(query, self.candidates, self._warmed.union(excludes[u]))
            cold = {s.item_id: s.score for s in found}
            also = alsos[u] if alsos else ""
            if also and also not in cold and also in index and also not in self._warmed:
                cold[also] = float(index.vector(also) @ query)
            cold_ids = [i for i in cold if i not in warm_ids]
            extra = np.zeros((len(cold_ids), layout.size), dtype=np.float32)
            extra[:, layout.score] = [cold[i] for i in cold_ids]
            extra[:, layout.transition_vote] = _NO_VOTE
            extra[:, layout.history_vote] = _NO_VOTE
            extra[:, layout.cooccurrence_vote] = _NO_VOTE
            extra[:, layout.popularity] = np.log(popularity.shares(cold_ids) + 1e-6)
            extra[:, layout.cold] = 1.0
            mixed = np.concatenate([block.features[mine], extra])
            everyone = warm_ids + cold_ids
            mixed[:, layout.content_similarity] = self.encoder.similarity(
                context.recent[-self.profile :], everyone
            )
            rows.append(np.concatenate([block.rows[mine], np.full(len(cold_ids), -1)]))
            ids.extend(everyone)
            features.append(mixed)
            bounds.append(bounds[-1] + len(everyone))
        return Block(
            np.concatenate(rows).astype(np.int64) if rows else block.rows,
            ids,
            np.array(bounds, dtype=np.int64),
            np.concatenate(features) if features else block.features,
        )

    def state_dict(self) -> dict[str, Any]:
        """The encoder's state and the cold index as last refreshed (copies)."""
        ids = self._cold.ids
        vectors = np.stack([self._cold.vector(i) for i in ids]) if ids else np.zeros((0, 1))
        return {
            "encoder": self.encoder.state_dict(),
            "cold_ids": ids,
            "cold_vectors": torch.from_numpy(vectors.astype(np.float32)),
            "warmed": sorted(self._warmed),
            "since_refresh": self._since_refresh,
            "stale": self._stale,
            "candidates": self.candidates,
            "refresh_every": self.refresh_every,
            "profile": self.profile,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        ids = [str(i) for i in state["cold_ids"]]
        self._cold = ExactIndex(self.encoder.dim, capacity=max(1, len(ids)))
        if ids:
            self._cold.upsert(ids, torch.as_tensor(state["cold_vectors"]).numpy())
        self._warmed = {str(i) for i in state["warmed"]}
        self._since_refresh = int(state["since_refresh"])
        self._stale = bool(state["stale"])
        self.candidates = int(state["candidates"])
        self.refresh_every = int(state["refresh_every"])
        self.profile = int(state["profile"])
