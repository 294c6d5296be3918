"""`TorchRecommender`: the GRU encoder and the mix re-ranker behind one `Recommender`."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from model.base import (
    Interaction,
    ItemChange,
    ItemIndex,
    OnlineRecommender,
    Scored,
    Update,
    UserContext,
)
from model.baselines import DEFAULT_HALF_LIFE_S, RecentPopularity, count_click
from model.content import ItemContent
from model.content_encoder import HashedContentEncoder
from model.index import ExactIndex
from model.torch_model import batch
from model.torch_model.cold import ContentSide
from model.torch_model.encoder import GruEncoder, click_inputs
from model.torch_model.ranker import MixRanker, cooccurrence_memory
from model.transitions import DEFAULT_SESSION_GAP_S, TransitionMemory


class TorchRecommender(OnlineRecommender):
    """GRU4Rec-style online recommender whose ranking is a learned hybrid.

    Architecture. `GruEncoder`: the user state is a GRU over the clicked items'
    embeddings (plus learned rows for the time gap and event type); one event is one
    step of truncated BPTT on the sampled-softmax loss of the clicked item against
    `negatives` uniform negatives, with Adagrad on the GRU and on the rows that have a
    gradient, so at most two item vectors change per event. `MixRanker`: `recommend`
    gathers candidates (the index's top `retrieve` by inner product with the user's h,
    transition successors, the history and co-occurrence votes, popular and recent
    items) and ranks them with a linear mixer over their features (`FeatureLayout`),
    trained online by predict-then-learn on one click in `mix_every` and served only
    while it beats its starting weights. When fewer than k candidates remain after
    `exclude`, the index and then decayed popularity fill the list.

    Content (`ContentAware`, issue 15). Once `set_content` gives it item content, new
    rows start from content vectors, every click teaches the content mapping, and items
    with content and no click yet are candidates with two more mixer features
    (`model.torch_model.cold` states the rules; `content_*` are its hyperparameters).
    Never given content, the model is exactly what it was without this feature.

    Contract. `learn_one` never mutates its arguments; it upserts each changed item
    vector into `index` and returns it in `Update.item_changes` with the vector before
    (None for an item the event created). A user's `UserContext.state` is 2 * dim + 2
    floats; a context with another size (a baseline's) starts from a zero state. The
    same seed and events give the same outputs, and the global RNG is never touched.
    Not thread-safe; does not set torch's thread count (the caller's decision).

    Its accuracy and speed are measured in the README (evaluation and benchmarks).

    >>> model = TorchRecommender(dim=8)
    >>> ctx = model.new_context()
    >>> for t, item in enumerate(["a", "b", "c"]):
    ...     ctx = model.learn_one(ctx, Interaction("u", item, float(t))).context
    >>> len(ctx.state), len(model.recommend(ctx, k=3))
    (18, 3)
    """

    name = "torch"

    def __init__(
        self,
        dim: int = 64,
        seed: int = 0,
        lr: float = 0.1,
        negatives: int = 64,
        index: ItemIndex | None = None,
        max_recent: int = 50,
        version_tag: str = "online",
        half_life_s: float = DEFAULT_HALF_LIFE_S,
        init_std: float = 0.1,
        window: int = 5,
        retrieve: int = 50,
        mix_lr: float = 0.05,
        session_gap_s: float = DEFAULT_SESSION_GAP_S,
        history: int = 50,
        history_exponent: float = 0.5,
        history_candidates: int = 50,
        popular_candidates: int = 20,
        context_lr: float = 0.01,
        cooccurrence_window: int = 5,
        cooccurrence_weight: float = 1.0,
        content_lr: float = 0.1,
        content_candidates: int = 20,
        content_refresh: int = 1000,
        mix_every: int = 4,
    ) -> None:
        if dim < 1 or negatives < 0 or not lr > 0:
            raise ValueError("dim must be >= 1, negatives >= 0 and lr > 0")
        self.dim = dim
        self.seed = seed
        self.content_lr = content_lr
        self.content_candidates = content_candidates
        self.content_refresh = content_refresh
        # Made by the first `set_content`: without it, every path is content-free.
        self.content: ContentSide | None = None
        self.max_recent = max_recent
        self.version_tag = version_tag
        self._owns_index = index is None
        self.searched = batch.SearchMemory()
        self.encoder = GruEncoder(dim, seed, lr, negatives, init_std, context_lr)
        self.popularity = RecentPopularity(half_life_s, max_recent=max_recent)
        self.transitions = TransitionMemory(window=window, session_gap_s=session_gap_s)
        # Which items a user clicks near each other in either order, whatever the time
        # between: the symmetric item-to-item evidence of an item-kNN over histories
        # (ratings in MovieLens are not a sequence the way a session's clicks are).
        cooccurrence = cooccurrence_memory(cooccurrence_window) if cooccurrence_window > 0 else None
        self.ranker = MixRanker(
            self.encoder,
            ExactIndex(dim) if index is None else index,
            self.popularity,
            self.transitions,
            cooccurrence,
            retrieve=retrieve,
            mix_lr=mix_lr,
            history=history,
            history_exponent=history_exponent,
            history_candidates=history_candidates,
            popular_candidates=popular_candidates,
            cooccurrence_weight=cooccurrence_weight,
            mix_every=mix_every,
        )

    def default_version(self) -> str:
        return f"torch-gru-{self.dim}d:{self.version_tag}"

    @property
    def index(self) -> ItemIndex:
        """The index retrieval searches and `learn_one` upserts changed vectors into."""
        return self.ranker.index

    def __len__(self) -> int:
        return len(self.encoder)

    def item_vector(self, item_id: str) -> np.ndarray:
        """A float32 copy of one item's embedding; KeyError if the id is unknown."""
        return self.encoder.vector(self.encoder.rows[item_id])

    def set_item_vectors(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Overwrite (or add) item embeddings with vectors decided elsewhere: the
        item's owner when several workers share the catalogue. Leaves the index, the
        Adagrad state and the random generator alone, so it never changes what the
        model draws next."""
        self.encoder.set_vectors(ids, vectors)

    def set_content(self, contents: Mapping[str, ItemContent]) -> None:
        """`ContentAware.set_content`: the first call gives the model its content side
        (`model.torch_model.cold`), after which new rows of these items start from
        their content vectors, clicks teach the content mapping and cold items become
        candidates. ValueError for an upstream embedding of another dimension than the
        first one given. An empty mapping on a model without content changes nothing."""
        if not contents and self.content is None:
            return
        if self.content is None:
            self._use_content(
                ContentSide(
                    HashedContentEncoder(self.dim, lr=self.content_lr),
                    self.encoder,
                    candidates=self.content_candidates,
                    refresh_every=self.content_refresh,
                )
            )
        assert self.content is not None
        self.content.set_content(contents)

    def content_vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """`ContentAware.content_vectors`, from the mapping as it stands now."""
        return {} if self.content is None else self.content.vectors(item_ids)

    def _use_content(self, content: ContentSide) -> None:
        self.content = content
        self.encoder.start = content.start
        self.ranker.use_content(content)

    def history_vote(self, recent: Sequence[str], k: int) -> list[Scored]:
        """The k items with the largest history vote for `recent` (a mixer feature)."""
        return self.ranker.history_vote(recent, k)

    def learn_one(self, context: UserContext, interaction: Interaction) -> Update:
        encoder, item = self.encoder, interaction.item_id
        h_prev, h, last_input = encoder.unpack(context.state)
        gap = interaction.timestamp - context.last_timestamp if context.recent else None
        inputs = click_inputs(gap, interaction.event_type)
        self.ranker.learn(context, h, item)
        same_session = count_click(self.popularity, self.transitions, context, interaction)
        self.ranker.forget_successors(context.recent, item, same_session)

        known = len(encoder)
        target = encoder.row(item)
        # Each changed row with its vector before the event (None: the event created it).
        befores: dict[int, np.ndarray | None] = {target: None} if target == known else {}
        last = encoder.rows.get(context.recent[-1]) if context.recent else None
        loss = None
        if last is not None:
            stepped = {row: encoder.vector(row) for row in (last, target) if row < known}
            h, loss = encoder.step(h_prev, last, target, last_input)
            if loss is not None:
                for row in (last, target):
                    befores.setdefault(row, stepped.get(row))
        h_next = encoder.read(target, inputs, h)

        changes = {
            encoder.ids[row]: ItemChange(befores[row], encoder.vector(row))
            for row in sorted(befores)
        }
        if changes:
            self.index.upsert(list(changes), np.stack([c.after for c in changes.values()]))
        if self.content is not None:
            self.content.learn(changes)
        return Update(
            context=self.advance(context, interaction, state=encoder.pack(h, h_next, inputs)),
            item_changes=changes,
            user_vector=h_next.numpy().copy(),
            loss=loss,
        )

    def learn_many(
        self, contexts: Mapping[str, UserContext], interactions: Sequence[Interaction]
    ) -> list[Update]:
        """`learn_one` for each interaction, in waves of distinct users with one batched
        GRU step per wave (`model.torch_model.batch` states the approximations). A batch
        of one is `learn_one` exactly. KeyError if a user has no context."""
        return batch.learn_many(self, contexts, interactions)

    def recommend_many(
        self, contexts: Sequence[UserContext], k: int, excludes: Sequence[Collection[str]]
    ) -> list[list[Scored]]:
        """`recommend` for each context, from one candidate block and one index search
        for the batch, whose unexcluded answers `learn_many` reuses for each user's
        next click (`batch.SearchMemory`). ValueError if the lengths differ."""
        if len(contexts) != len(excludes):
            raise ValueError(f"{len(contexts)} contexts but {len(excludes)} exclude sets")
        if k <= 0:
            return [[] for _ in contexts]
        hs = self._queries(contexts)
        return self.rank_many(
            contexts, k, excludes, self.searched.search(self, contexts, excludes, hs), hs
        )

    def _queries(self, contexts: Sequence[UserContext]) -> dict[int, torch.Tensor]:
        """h of each context that ranks (one with recent items), by position."""
        unpack = self.encoder.unpack
        return {i: unpack(context.state)[1] for i, context in enumerate(contexts) if context.recent}

    def recommend(
        self, context: UserContext, k: int, exclude: Collection[str] = ()
    ) -> list[Scored]:
        return self.rank_many([context], k, [exclude])[0]

    def rank_many(
        self,
        contexts: Sequence[UserContext],
        k: int,
        excludes: Sequence[Collection[str]],
        founds: Sequence[list[str] | None] | None = None,
        hs: Mapping[int, torch.Tensor] | None = None,
    ) -> list[list[Scored]]:
        """`recommend` for each context, ranked from one candidate block. `founds[i]`:
        the index's answer for context i's h (`retrieve` ids, `excludes[i]` applied) if
        the caller already searched; `hs`: `_queries(contexts)` if the caller has it."""
        if k <= 0:
            return [[] for _ in contexts]
        results: list[list[Scored]] = [[] for _ in contexts]
        hs = self._queries(contexts) if hs is None else hs
        ranking = list(hs)
        if ranking:
            ranked = self.ranker.rank_many(
                [contexts[i] for i in ranking],
                list(hs.values()),
                k,
                [excludes[i] for i in ranking],
                [None if founds is None else founds[i] for i in ranking],
            )
            for i, found in zip(ranking, ranked, strict=True):
                results[i] = found
        return [
            self._filled(context, k, exclude, found) if len(found) < k else found
            for context, exclude, found in zip(contexts, excludes, results, strict=True)
        ]

    def _filled(
        self, context: UserContext, k: int, exclude: Collection[str], results: list[Scored]
    ) -> list[Scored]:
        """`results` filled up to k (from the index, then by popularity, then with cold
        items): cold start, or fewer candidates than k. Fill scores
        sit below the mixed scores only to keep the list best-first; they are not
        comparable to them."""
        taken = {s.item_id for s in results}
        floor = results[-1].score if results else 0.0
        fill: list[Scored] = []
        query = self.encoder.query(context.state)
        if query is not None:
            fill = self.index.search(query, k - len(results), taken.union(exclude))
        taken.update(s.item_id for s in fill)
        fill += self.popularity.top(k - len(results) - len(fill), taken.union(exclude))
        if self.content is not None and len(results) + len(fill) < k:
            taken.update(s.item_id for s in fill)
            fill += self.content.cold_top(query, k - len(results) - len(fill), taken.union(exclude))
        if results:
            return results + [Scored(s.item_id, floor - 1.0 - i) for i, s in enumerate(fill)]
        return fill

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, embeddings of known items,
        Adagrad and generator state, counts, the mixers, and `content` once content is
        set (none before, so a model without content saves what it always saved).
        Tensors are copies; the whole dict loads with `torch.load(...,
        weights_only=True)`."""
        state = {**self.encoder.state_dict(), **self.ranker.state_dict()}
        if self.content is not None:
            state["content"] = self.content.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the learned state with `state`'s and upsert every item vector into
        the index. A model-owned index is rebuilt from scratch; an index passed in
        keeps any other items it holds. ValueError if `dim` or a shape differs, KeyError
        if a part is missing (a state of another checkpoint format)."""
        self.encoder.load_state_dict(state)
        saved = state.get("content")  # absent from states saved without content
        self.content, self.encoder.start, self.ranker.content = None, None, None
        if saved is not None:
            content = ContentSide(HashedContentEncoder(self.dim), self.encoder)
            content.load_state_dict(saved)
            self._use_content(content)
        self.ranker.load_state_dict(state)
        self.searched = batch.SearchMemory()
        if self._owns_index:
            self.ranker.index = ExactIndex(self.dim)
        if len(self.encoder):
            n = len(self.encoder)
            self.index.upsert(self.encoder.ids, self.encoder.emb[:n].numpy())

    @property
    def cooccurrence(self) -> TransitionMemory | None:
        return self.ranker.cooccurrence
