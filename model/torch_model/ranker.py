"""The re-ranker: candidates from several sources, one feature row per candidate, and a
linear mixer learned online against its own starting weights (the challenger).

Repeat features follow RepeatNet's observation that re-clicks deserve their own signal
(Ren et al., 2019, https://arxiv.org/abs/1812.02646).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from model.base import ItemIndex, Scored, UserContext
from model.baselines import RecentPopularity
from model.torch_model.blocks import Block, CandidateBlocks, FeatureLayout
from model.torch_model.candidates import RowMap, SuccessorCache
from model.torch_model.cold import ContentSide
from model.torch_model.encoder import GruEncoder
from model.transitions import TransitionMemory

_EPS = 1e-10  # Adagrad's default epsilon
# The domain's repeat rate (share of clicks on an item already in the user's `recent`)
# is tracked as an exponential average with this rate; below _RARE_REPEATS the mixer
# trains on candidates without the user's recent items, as a ranking that excludes
# seen items will show them.
_REPEAT_RATE_ALPHA = 0.01
_RARE_REPEATS = 0.05
# The learned mixer serves only while it ranks the clicked item better than its
# starting weights do: both are scored on every mixer step (reciprocal rank, 0 past
# this cut-off), as exponential averages with this rate.
_MIX_RANK_CUTOFF = 20
_MIX_SCORE_ALPHA = 0.002


def cooccurrence_memory(window: int) -> TransitionMemory:
    """Counts of items clicked within `window` clicks of each other, both ways with
    equal weight and whatever the time between (no session gap)."""
    return TransitionMemory(window=window, backward_weight=1.0, session_gap_s=math.inf)


class MixRanker(CandidateBlocks):
    """Candidates for a user and a learned linear mix of their features.

    Candidates: the index's top `retrieve` by inner product with h, the successors of
    the last `window` items in `transitions`, the `history_candidates` best items of the
    history and co-occurrence votes, the `popular_candidates` most popular items, and
    the user's last `REPEAT_SPAN` items (blocks.py builds them); never an excluded id
    or one the encoder does not know. Features: see `FeatureLayout`. The history vote
    is, per item j, the sum over the last `history` items r_d of d ** -history_exponent
    * P(j | r_d); the co-occurrence vote the same sum over `cooccurrence` (symmetric,
    session-blind).

    The mixer starts as the log transition vote plus `cooccurrence_weight` times the log
    co-occurrence vote, and `learn` takes one Adagrad step (`mix_lr`) on the softmax
    cross-entropy of the clicked item among its candidates for one click in
    `mix_every` (picked by a hash of the click, so a batch and one click at a time pick
    the same ones; building the candidates to step on costs about as much as ranking).
    Those starting weights stay as the challenger: both are scored online (reciprocal rank of the
    clicked item) and `mixer()` serves whichever leads. Where repeats are rare (MovieLens,
    whose rankings exclude seen items) the step trains on the ranking that will be
    shown: no recent items among the candidates. Not thread-safe.
    """

    def __init__(
        self,
        encoder: GruEncoder,
        index: ItemIndex,
        popularity: RecentPopularity,
        transitions: TransitionMemory,
        cooccurrence: TransitionMemory | None,
        *,
        retrieve: int,
        mix_lr: float,
        history: int,
        history_exponent: float,
        history_candidates: int,
        popular_candidates: int,
        cooccurrence_weight: float,
        mix_every: int = 1,
    ) -> None:
        if mix_every < 1:
            raise ValueError(f"mix_every must be at least 1, not {mix_every}")
        self.mix_every = mix_every
        self.encoder = encoder
        self.index = index
        self.popularity = popularity
        self.transitions = transitions
        self.cooccurrence = cooccurrence
        self.retrieve = retrieve
        self.mix_lr = mix_lr
        self.history = history
        self.history_exponent = history_exponent
        self.history_candidates = history_candidates
        self.popular_candidates = popular_candidates
        self.cooccurrence_weight = cooccurrence_weight
        # The history vote's weight for the d-th last item, d ** -history_exponent.
        self._history_decay = [d**-history_exponent for d in range(1, max(0, history) + 1)]
        self.content: ContentSide | None = None
        self._set_layout(transitions.window)
        self.prior = self._starting_mix()
        self.mix = self.prior.clone()
        self._mix_sq = torch.zeros(self.layout.size)
        self.mix_scores = [0.0, 0.0]  # (prior, learned) online reciprocal rank
        # Starts as if repeats were common, so nothing is excluded until evidence says
        # otherwise.
        self.repeat_rate = 0.25
        self._caches()
        self._popularity_rows = RowMap()

    def _caches(self) -> None:
        """Fresh successor caches over the current memories."""
        self._successors = SuccessorCache(self.transitions, self.encoder)
        self._neighbours = (
            None if self.cooccurrence is None else SuccessorCache(self.cooccurrence, self.encoder)
        )

    def _set_layout(self, window: int, content: bool = False) -> None:
        self.layout = FeatureLayout(window, content)
        self._decay = torch.arange(1, window + 1, dtype=torch.float32).pow(-1.5)

    def use_content(self, content: ContentSide) -> None:
        """Rank with `content`'s cold candidates and features from now on: the mixers
        gain the content columns with zero weights, which the learned mixer trains."""
        self.content = content
        if not self.layout.content:
            self._set_layout(self.layout.window, content=True)
            extra = self.layout.size - len(self.mix)
            self.prior = torch.cat([self.prior, torch.zeros(extra)])
            self.mix = torch.cat([self.mix, torch.zeros(extra)])
            self._mix_sq = torch.cat([self._mix_sq, torch.zeros(extra)])

    # Ranking.

    def rank(
        self,
        context: UserContext,
        h: torch.Tensor,
        k: int,
        exclude: Collection[str],
        found: list[str] | None = None,
    ) -> list[Scored]:
        """The best k candidates for `context` by the serving mixer, best first.
        `found`: the index's answer for (h, `retrieve`, exclude) if the caller already
        searched."""
        return self.rank_many([context], [h], k, [exclude], [found])[0]

    def rank_many(
        self,
        contexts: Sequence[UserContext],
        hs: Sequence[torch.Tensor],
        k: int,
        excludes: Sequence[Collection[str]],
        founds: Sequence[list[str] | None],
    ) -> list[list[Scored]]:
        """`rank` for each user, from one candidate block: each user's list is what
        `rank` alone returns."""
        block = self.block(contexts, hs, excludes, founds)
        logits = (torch.from_numpy(block.features) @ self.mixer()).numpy()
        ranked: list[list[Scored]] = []
        for u in range(len(contexts)):
            mine = block.of(u)
            scores = logits[mine]
            order = np.argsort(-scores, kind="stable")[:k].tolist()
            ids = block.ids[mine]
            ranked.append([Scored(ids[i], float(scores[i])) for i in order])
        return ranked

    def mixer(self) -> torch.Tensor:
        """The weights `rank` ranks with: the learned mixer, unless its starting
        weights have ranked the clicked item better online."""
        prior, learned = self.mix_scores
        return self.prior if prior > learned else self.mix

    def _starting_mix(self) -> torch.Tensor:
        """The mixer's starting weights: the log transition vote plus
        `cooccurrence_weight` times the log co-occurrence vote."""
        weights = torch.zeros(self.layout.size)
        weights[self.layout.transition_vote] = 1.0
        weights[self.layout.cooccurrence_vote] = self.cooccurrence_weight
        return weights

    # Learning.

    def learn(
        self, context: UserContext, h: torch.Tensor, item: str, found: list[str] | None = None
    ) -> None:
        """Before the click on `item` changes anything else: count it towards the
        repeat rate and step the mixer towards it among the candidates `rank` would
        have ranked for `context` (predict-then-learn). `found`: the index's unexcluded
        answer for h, if the caller already searched."""
        self.learn_many([context], [h], [item], [found])

    def learn_many(
        self,
        contexts: Sequence[UserContext],
        hs: Sequence[torch.Tensor],
        items: Sequence[str],
        founds: Sequence[list[str] | None],
    ) -> None:
        """`learn` for clicks of distinct users, in order, with every click's
        candidates built first from the state before any of them: one block for all
        (with one click, exactly `learn`)."""
        stepping: list[int] = []
        rare: list[bool] = []
        for j, (context, item) in enumerate(zip(contexts, items, strict=True)):
            if not context.recent:
                continue
            repeat = item in context.recent
            self.repeat_rate += _REPEAT_RATE_ALPHA * (float(repeat) - self.repeat_rate)
            rare_now = self.repeat_rate < _RARE_REPEATS
            known = item in self.encoder.rows or (
                self.content is not None and self.content.is_cold(item)
            )
            if known and not (repeat and rare_now) and self._steps_on(context, item):
                stepping.append(j)
                rare.append(rare_now)
        if not stepping:
            return
        # Where repeats are rare the step trains on the ranking that will be shown, so
        # the clicked item is not added when no source proposed it.
        block = self.block(
            [contexts[j] for j in stepping],
            [hs[j] for j in stepping],
            [()] * len(stepping),
            [founds[j] for j in stepping],
            alsos=["" if rare[u] else items[j] for u, j in enumerate(stepping)],
        )
        for u, j in enumerate(stepping):
            self._mix_step(block, u, contexts[j], items[j], rare[u])

    def _steps_on(self, context: UserContext, item: str) -> bool:
        """Whether the mixer steps on the click on `item` after `context`: one click in
        `mix_every`, by a hash of what identifies the click whatever order a batch
        applies it in."""
        if self.mix_every == 1:
            return True
        key = f"{context.last_timestamp!r}|{item}|{len(context.recent)}"
        return zlib.crc32(key.encode()) % self.mix_every == 0

    def forget_successors(self, recent: Sequence[str], item: str, same_session: bool) -> None:
        """After `transitions` counted the click on `item`: drop the successor arrays it
        made stale, and count the click in `cooccurrence`."""
        if same_session and recent:
            self._successors.forget((*recent[-self.transitions.window :], item))
        if self.cooccurrence is not None and self._neighbours is not None and recent:
            self.cooccurrence.observe(recent, item, same_session=True)
            self._neighbours.forget((*recent[-self.cooccurrence.window :], item))

    def _mix_step(
        self, block: Block, u: int, context: UserContext, target: str, rare: bool
    ) -> None:
        """One Adagrad step on the softmax cross-entropy of `target` among block user
        u's candidates (the gradient of that loss in closed form)."""
        mine = block.of(u)
        ids, features = block.ids[mine], block.features[mine]
        if target not in ids:
            return  # rare repeats and no source proposed it (else `alsos` added it)
        if rare:
            # Train on the ranking that will be shown: no seen items. (Pulling in an
            # item no source proposed would teach weights for "has no evidence".)
            seen = set(context.recent)
            keep = [c for c, i in enumerate(ids) if i not in seen or i == target]
            if len(keep) < len(ids):
                ids = [ids[c] for c in keep]
                features = features[keep]
        if len(ids) < 2:
            return
        at = ids.index(target)
        # The same torch operations as one click at a time always took, so that a
        # rounding difference is not amplified by Adagrad's first steps (a zero
        # gradient that rounds to +-1e-8 moves a weight by the full learning rate).
        rows = torch.from_numpy(features)
        prior_logits, learned_logits = rows @ self.prior, rows @ self.mix
        for which, logits in enumerate((prior_logits, learned_logits)):
            rank = int((logits > logits[at]).sum())
            hit = 1.0 / (rank + 1) if rank < _MIX_RANK_CUTOFF else 0.0
            self.mix_scores[which] += _MIX_SCORE_ALPHA * (hit - self.mix_scores[which])
        # The step trains the learned mixer, so its gradient is the learned softmax's,
        # whichever mixer serves.
        p = torch.softmax(learned_logits, 0)
        p[at] -= 1.0
        grad = p @ rows
        self._mix_sq.addcmul_(grad, grad)
        self.mix.addcdiv_(grad, self._mix_sq.sqrt().add_(_EPS), value=-self.mix_lr)

    # Persistence.

    def state_dict(self) -> dict[str, Any]:
        """The ranker's part of the model state (copies)."""
        return {
            "popularity": self.popularity.state_dict(),
            "transitions": self.transitions.state_dict(),
            "cooccurrence": (None if self.cooccurrence is None else self.cooccurrence.state_dict()),
            "mix": self.mix.clone(),
            "mix_sq": self._mix_sq.clone(),
            "mix_prior": self.prior.clone(),
            "mix_scores": list(self.mix_scores),
            "repeat_rate": self.repeat_rate,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the ranker's learned state with `state`'s. The feature layout follows
        the saved transition window; ValueError if a mixer does not fit it."""
        self.popularity.load_state_dict(state["popularity"])
        self.transitions.load_state_dict(state["transitions"])
        saved = state["cooccurrence"]
        if saved is None:
            # Saved by a model without one (cooccurrence_window 0): this model's own
            # memory, if it has one, starts empty.
            if self.cooccurrence is not None:
                self.cooccurrence = cooccurrence_memory(self.cooccurrence.window)
        else:
            self.cooccurrence = cooccurrence_memory(1)
            self.cooccurrence.load_state_dict(saved)
        self._caches()
        # Saved with the content columns or without (by a model without content).
        window = self.transitions.window
        saved_size = len(torch.as_tensor(state["mix"]))
        self._set_layout(window, content=saved_size == FeatureLayout(window, True).size)
        mixers = {}
        for name in ("mix", "mix_sq", "mix_prior"):
            mixers[name] = torch.as_tensor(state[name], dtype=torch.float32).clone()
            if mixers[name].shape != (self.layout.size,):
                raise ValueError(
                    f"{name} has {tuple(mixers[name].shape)} weights, the feature layout "
                    f"{self.layout.size}"
                )
        self.mix, self._mix_sq, self.prior = mixers["mix"], mixers["mix_sq"], mixers["mix_prior"]
        self.mix_scores = [float(x) for x in state["mix_scores"]]
        self.repeat_rate = float(state["repeat_rate"])
