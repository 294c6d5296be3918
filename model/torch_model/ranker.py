"""The re-ranker: candidates from several sources, one feature row per candidate, and a
linear mixer learned online against its own starting weights (the challenger).

Repeat features follow RepeatNet's observation that re-clicks deserve their own signal
(Ren et al., 2019, https://arxiv.org/abs/1812.02646).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model.base import ItemIndex, Scored, UserContext
from model.baselines import RecentPopularity
from model.torch_model.encoder import GruEncoder
from model.transitions import TransitionMemory

_EPS = 1e-10  # Adagrad's default epsilon
_REPEAT_SPAN = 10  # how many of the user's last items count as repeat candidates
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
_LOG_FLOOR = math.log(1e-4)  # a log vote of zero evidence

# A sparse vector over item rows: (ascending unique rows, their weights).
Sparse = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Evidence:
    """What a candidate set's features are built from: the window's transition
    probabilities (P(j | r_d) over rows j, for d = 1..window: r_1 the last item), the
    history vote, the co-occurrence vote."""

    window: list[Sparse]
    history: Sparse | None
    neighbours: Sparse | None


@dataclass(frozen=True)
class FeatureLayout:
    """The columns of a candidate's feature row, for a transition window of `window`."""

    window: int

    score = 0  #: e_j . h, the encoder's score

    @property
    def transitions(self) -> slice:
        """P(j | r_d) for the last `window` items, r_1 (the last) first"""
        return slice(1, 1 + self.window)

    @property
    def transition_vote(self) -> int:
        """log of the recency-weighted sum of the transition probabilities"""
        return 1 + self.window

    @property
    def is_last(self) -> int:
        """j is the user's last item"""
        return 2 + self.window

    @property
    def is_previous(self) -> int:
        """j is the item before the last"""
        return 3 + self.window

    @property
    def repeats(self) -> int:
        """how often j occurs in the last `_REPEAT_SPAN` items"""
        return 4 + self.window

    @property
    def history_vote(self) -> int:
        """log of the history vote"""
        return 5 + self.window

    @property
    def popularity(self) -> int:
        """log of j's decayed popularity share"""
        return 6 + self.window

    @property
    def cooccurrence_vote(self) -> int:
        """log of the co-occurrence vote"""
        return 7 + self.window

    @property
    def size(self) -> int:
        return 8 + self.window


def _lookup(sparse: Sparse, rows: np.ndarray) -> np.ndarray:
    """The weights of `rows` in a sparse vector; 0.0 for a row it does not hold."""
    held, weights = sparse
    at = np.minimum(np.searchsorted(held, rows), len(held) - 1)
    found: np.ndarray = np.where(held[at] == rows, weights[at], 0.0)
    return found


def _log_vote(sparse: Sparse | None, rows: np.ndarray) -> torch.Tensor | float:
    return _LOG_FLOOR if sparse is None else torch.from_numpy(np.log(_lookup(sparse, rows) + 1e-4))


def cooccurrence_memory(window: int) -> TransitionMemory:
    """Counts of items clicked within `window` clicks of each other, both ways with
    equal weight and whatever the time between (no session gap)."""
    return TransitionMemory(window=window, backward_weight=1.0, session_gap_s=math.inf)


class MixRanker:
    """Candidates for a user and a learned linear mix of their features.

    Candidates: the index's top `retrieve` by inner product with h, the successors of
    the last `window` items in `transitions`, the `history_candidates` best items of the
    history and co-occurrence votes, the `popular_candidates` most popular items, and
    the user's last `_REPEAT_SPAN` items; never an excluded id or one the encoder does
    not know. Features: see `FeatureLayout`. The history vote is, per item j, the sum
    over the last `history` items r_d of d ** -history_exponent * P(j | r_d); the
    co-occurrence vote the same sum over `cooccurrence` (symmetric, session-blind).

    The mixer starts as the log transition vote plus `cooccurrence_weight` times the log
    co-occurrence vote, and `learn` takes one Adagrad step (`mix_lr`) per click on the
    softmax cross-entropy of the clicked item among its candidates. Those starting
    weights stay as the challenger: both are scored online (reciprocal rank of the
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
    ) -> None:
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
        self._set_layout(transitions.window)
        self.prior = self._starting_mix()
        self.mix = self.prior.clone()
        self._mix_sq = torch.zeros(self.layout.size)
        self.mix_scores = [0.0, 0.0]  # (prior, learned) online reciprocal rank
        # Starts as if repeats were common, so nothing is excluded until evidence says
        # otherwise.
        self.repeat_rate = 0.25
        # The last unexcluded candidate set `rank` built, with its context and the event
        # count then. Predict-then-learn asks for the same set again in `learn`; it is
        # reused only if nothing was learned in between, so it never changes a result.
        self._events = 0
        self._cache: tuple[UserContext, int, list[str], torch.Tensor, Evidence] | None = None
        # Each item's successors as (rows, probabilities), built on demand from a memory
        # and dropped when a click changes them; derived, not state.
        self._successors: dict[str, Sparse] = {}
        self._neighbours: dict[str, Sparse] = {}

    def _set_layout(self, window: int) -> None:
        self.layout = FeatureLayout(window)
        self._decay = torch.arange(1, window + 1, dtype=torch.float32).pow(-1.5)

    # Ranking.

    def rank(
        self,
        context: UserContext,
        h: torch.Tensor,
        k: int,
        exclude: Collection[str],
        found: list[Scored] | None = None,
    ) -> list[Scored]:
        """The best k candidates for `context` by the serving mixer, best first.
        `found`: the index's answer for (h, `retrieve`, exclude) if the caller already
        searched (a batch searches once for all its users)."""
        ids, features, evidence = self._candidates(context, h, exclude, found=found)
        if not exclude:
            self._cache = (context, self._events, ids, features, evidence)
        if not ids:
            return []
        logits = (features @ self.mixer()).numpy()
        order = np.argsort(-logits, kind="stable")[:k]
        return [Scored(ids[i], float(logits[i])) for i in order]

    def mixer(self) -> torch.Tensor:
        """The weights `rank` ranks with: the learned mixer, unless its starting
        weights have ranked the clicked item better online."""
        prior, learned = self.mix_scores
        return self.prior if prior > learned else self.mix

    def _candidates(
        self,
        context: UserContext,
        h: torch.Tensor,
        exclude: Collection[str],
        also: str = "",
        found: list[Scored] | None = None,
    ) -> tuple[list[str], torch.Tensor, Evidence]:
        """The candidate ids (plus `also` if given), their features and evidence;
        `found` is the index's answer if already searched."""
        rows_of, ids_of = self.encoder.rows, self.encoder.ids
        window = list(reversed(context.recent[-self.transitions.window :]))
        evidence = Evidence(
            [self._successors_of(prev, self.transitions, self._successors) for prev in window],
            self._vote(context.recent, self.transitions, self._successors),
            None
            if self.cooccurrence is None
            else self._vote(context.recent, self.cooccurrence, self._neighbours),
        )
        candidates = dict.fromkeys(self.transitions.successor_ids(window))
        candidates.update(dict.fromkeys(context.recent[-_REPEAT_SPAN:]))
        if self.history_candidates > 0:
            for sparse in (evidence.history, evidence.neighbours):
                if sparse is None:
                    continue
                rows, weights = sparse
                top = np.lexsort((rows, -weights))[: self.history_candidates]  # ties by row
                candidates.update(dict.fromkeys(ids_of[rows[c]] for c in top if weights[c] > 0))
        if self.popular_candidates > 0:
            popular = self.popularity.top(self.popular_candidates, exclude)
            candidates.update(dict.fromkeys(s.item_id for s in popular))
        if self.retrieve > 0 and len(self.index) > 0:
            if found is None:
                found = self.index.search(h.numpy(), self.retrieve, exclude)
            candidates.update(dict.fromkeys(s.item_id for s in found))
        if also:
            candidates[also] = None
        ids = [i for i in candidates if i in rows_of and i not in exclude]
        return ids, self._features(ids, context, h, evidence), evidence

    def history_vote(self, recent: Sequence[str], k: int) -> list[Scored]:
        """The k items with the largest history vote for a user whose recent items are
        `recent`, best first, ties by first appearance; only items with a vote."""
        history = self._vote(recent, self.transitions, self._successors)
        if history is None or k <= 0:
            return []
        rows, weights = history
        order = np.lexsort((rows, -weights))[:k]
        ids = self.encoder.ids
        return [Scored(ids[rows[c]], float(weights[c])) for c in order if weights[c] > 0]

    def _vote(
        self, recent: Sequence[str], memory: TransitionMemory, cache: dict[str, Sparse]
    ) -> Sparse | None:
        """Sum over the last `history` items r_d of d ** -history_exponent times
        memory's P(row | r_d), as (rows ascending, weights); None if none of them has a
        successor. Sparse on purpose: its cost follows the successors' count, not the
        catalogue's size. `cache` keeps each item's successor arrays."""
        if self.history <= 0:
            return None
        rows_parts: list[np.ndarray] = []
        weight_parts: list[np.ndarray] = []
        for d, prev in enumerate(reversed(recent[-self.history :]), 1):
            arrays = self._successors_of(prev, memory, cache)
            if len(arrays[0]):
                rows_parts.append(arrays[0])
                weight_parts.append(arrays[1] * d**-self.history_exponent)
        if not rows_parts:
            return None
        rows, slots = np.unique(np.concatenate(rows_parts), return_inverse=True)
        # bincount adds each slot's weights in their order, as a dense bincount would.
        return rows, np.bincount(slots, np.concatenate(weight_parts), minlength=len(rows))

    def _successors_of(
        self, item: str, memory: TransitionMemory, cache: dict[str, Sparse]
    ) -> Sparse:
        """`memory`'s P(row | item) over the rows the encoder knows, rows ascending;
        kept in `cache` until a click changes them (`forget_successors`)."""
        arrays = cache.get(item)
        if arrays is None:
            rows_of = self.encoder.rows
            successors = memory.successors(item)
            known = [j for j in successors if j in rows_of]
            rows = np.fromiter((rows_of[j] for j in known), np.int64, len(known))
            weights = np.fromiter((successors[j] for j in known), np.float64, len(known))
            order = np.argsort(rows)
            arrays = (rows[order], weights[order])
            cache[item] = arrays
        return arrays

    def _features(
        self, ids: list[str], context: UserContext, h: torch.Tensor, evidence: Evidence
    ) -> torch.Tensor:
        """One row per id, laid out as `self.layout`."""
        layout = self.layout
        features = torch.zeros(len(ids), layout.size)
        if not ids:
            return features
        rows_of = self.encoder.rows
        rows = torch.from_numpy(np.fromiter(map(rows_of.__getitem__, ids), np.int64, len(ids)))
        features[:, layout.score] = self.encoder.emb[rows] @ h
        window = np.zeros((len(ids), layout.window), dtype=np.float32)
        for d, successors in enumerate(evidence.window):
            if len(successors[0]):
                window[:, d] = _lookup(successors, rows.numpy())
        p = torch.from_numpy(window)
        features[:, layout.transitions] = p
        features[:, layout.transition_vote] = torch.log(p @ self._decay + 1e-4)
        features[:, layout.history_vote] = _log_vote(evidence.history, rows.numpy())
        features[:, layout.popularity] = torch.from_numpy(
            np.log(self.popularity.shares(ids) + 1e-6)
        )
        features[:, layout.cooccurrence_vote] = _log_vote(evidence.neighbours, rows.numpy())
        # Repeat features: only the few recent items can have them, so set those cells.
        position = {item_id: c for c, item_id in enumerate(ids)}
        for back, item_id in enumerate(reversed(context.recent[-_REPEAT_SPAN:])):
            c = position.get(item_id)
            if c is None:
                continue
            if back < 2:
                features[c, layout.is_last + back] = 1.0
            features[c, layout.repeats] += 1.0
        return features

    def _starting_mix(self) -> torch.Tensor:
        """The mixer's starting weights: the log transition vote plus
        `cooccurrence_weight` times the log co-occurrence vote."""
        weights = torch.zeros(self.layout.size)
        weights[self.layout.transition_vote] = 1.0
        weights[self.layout.cooccurrence_vote] = self.cooccurrence_weight
        return weights

    # Learning.

    def learn(
        self, context: UserContext, h: torch.Tensor, item: str, found: list[Scored] | None = None
    ) -> None:
        """Before the click on `item` changes anything else: count it towards the
        repeat rate and step the mixer towards it among the candidates `rank` would
        have ranked for `context` (predict-then-learn). `found`: the index's unexcluded
        answer for h, if the caller already searched."""
        self._events += 1
        if not context.recent:
            return
        repeat = item in context.recent
        self.repeat_rate += _REPEAT_RATE_ALPHA * (float(repeat) - self.repeat_rate)
        if item in self.encoder.rows and not (repeat and self.repeat_rate < _RARE_REPEATS):
            self._mix_step(context, h, item, found)

    def forget_successors(self, recent: Sequence[str], item: str, same_session: bool) -> None:
        """After `transitions` counted the click on `item`: drop the successor arrays it
        made stale, and count the click in `cooccurrence`."""
        if same_session and recent:
            for source in (*recent[-self.transitions.window :], item):
                self._successors.pop(source, None)
        if self.cooccurrence is not None and recent:
            self.cooccurrence.observe(recent, item, same_session=True)
            for source in (*recent[-self.cooccurrence.window :], item):
                self._neighbours.pop(source, None)

    def _mix_step(
        self, context: UserContext, h: torch.Tensor, target: str, found: list[Scored] | None
    ) -> None:
        """One Adagrad step on the softmax cross-entropy of `target` among the
        candidates for `context` (the gradient of that loss in closed form)."""
        cache = self._cache
        rare_repeats = self.repeat_rate < _RARE_REPEATS
        if cache is not None and cache[0] is context and cache[1] == self._events - 1:
            _, _, ids, features, evidence = cache
            if target not in ids:
                if rare_repeats:
                    return
                extra = self._features([target], context, h, evidence)
                ids, features = [*ids, target], torch.cat([features, extra])
        else:
            also = "" if rare_repeats else target
            ids, features, _ = self._candidates(context, h, (), also=also, found=found)
        self._cache = None
        if rare_repeats:
            # Train on the ranking that will be shown: no seen items, and no step when
            # the clicked item is not among the candidates at all (the mixer cannot
            # rank it, and pulling it in teaches weights for "has no evidence").
            if target not in ids:
                return
            seen = set(context.recent)
            keep = [c for c, i in enumerate(ids) if i not in seen or i == target]
            if len(keep) < len(ids):
                ids = [ids[c] for c in keep]
                features = features[keep]
        if len(ids) < 2:
            return
        at = ids.index(target)
        prior_logits, learned_logits = features @ self.prior, features @ self.mix
        for which, logits in enumerate((prior_logits, learned_logits)):
            rank = int((logits > logits[at]).sum())
            hit = 1.0 / (rank + 1) if rank < _MIX_RANK_CUTOFF else 0.0
            self.mix_scores[which] += _MIX_SCORE_ALPHA * (hit - self.mix_scores[which])
        # The step trains the learned mixer, so its gradient is the learned softmax's,
        # whichever mixer serves.
        p = torch.softmax(learned_logits, 0)
        p[at] -= 1.0
        grad = p @ features
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
        self._cache = None
        self._successors = {}
        self._neighbours = {}
        saved = state["cooccurrence"]
        if saved is None:
            # Saved by a model without one (cooccurrence_window 0): this model's own
            # memory, if it has one, starts empty.
            if self.cooccurrence is not None:
                self.cooccurrence = cooccurrence_memory(self.cooccurrence.window)
        else:
            self.cooccurrence = cooccurrence_memory(1)
            self.cooccurrence.load_state_dict(saved)
        self._set_layout(self.transitions.window)
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
