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

from model.base import ItemIndex, Scored, UserContext, search_each
from model.baselines import RecentPopularity
from model.torch_model.candidates import (
    KeyedSparse,
    SuccessorCache,
    Successors,
    best_per_user,
    first_in_order,
    summed,
)
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
_NONE = np.empty(0, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class Block:
    """The candidates of several users and their features: user u's are
    `rows[of(u)]`, with item ids `ids[of(u)]` and feature rows `features[of(u)]`, in
    candidate order (sources in the order `MixRanker` lists them, each id at its first
    appearance)."""

    rows: np.ndarray
    ids: list[str]
    bounds: np.ndarray
    features: np.ndarray

    def of(self, u: int) -> slice:
        return slice(int(self.bounds[u]), int(self.bounds[u + 1]))


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
        # The history vote's weight for the d-th last item, d ** -history_exponent.
        self._history_decay = [d**-history_exponent for d in range(1, max(0, history) + 1)]
        self._set_layout(transitions.window)
        self.prior = self._starting_mix()
        self.mix = self.prior.clone()
        self._mix_sq = torch.zeros(self.layout.size)
        self.mix_scores = [0.0, 0.0]  # (prior, learned) online reciprocal rank
        # Starts as if repeats were common, so nothing is excluded until evidence says
        # otherwise.
        self.repeat_rate = 0.25
        self._caches()

    def _caches(self) -> None:
        """Fresh successor caches over the current memories."""
        self._successors = SuccessorCache(self.transitions, self.encoder)
        self._neighbours = (
            None if self.cooccurrence is None else SuccessorCache(self.cooccurrence, self.encoder)
        )

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
        searched."""
        return self.rank_many([context], [h], k, [exclude], [found])[0]

    def rank_many(
        self,
        contexts: Sequence[UserContext],
        hs: Sequence[torch.Tensor],
        k: int,
        excludes: Sequence[Collection[str]],
        founds: Sequence[list[Scored] | None],
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

    def block(
        self,
        contexts: Sequence[UserContext],
        hs: Sequence[torch.Tensor],
        excludes: Sequence[Collection[str]],
        founds: Sequence[list[Scored] | None],
        alsos: Sequence[str] = (),
    ) -> Block:
        """The candidates and features of every user in `contexts` (each with recent
        items), user u's built from `hs[u]`, without `excludes[u]`, plus `alsos[u]` if
        given; `founds[u]` is the index's answer for hs[u] if already searched."""
        encoder = self.encoder
        rows_of, ids_of = encoder.rows, encoder.ids
        n, users, width = max(1, len(ids_of)), len(contexts), self.transitions.window
        recents = [context.recent for context in contexts]
        history = self._votes(recents, self._successors, n)
        neighbours = None if self._neighbours is None else self._votes(recents, self._neighbours, n)
        voted = [best_per_user(history, n, users, self.history_candidates)]
        if neighbours is not None:
            voted.append(best_per_user(neighbours, n, users, self.history_candidates))
        popular = self._popular(excludes)
        found = self._found(hs, excludes, founds)

        parts: list[np.ndarray] = []
        lengths: list[int] = []
        window_parts: list[Successors] = []
        window_offsets: list[int] = []
        repeat_keys: list[int] = []
        repeat_back: list[int] = []
        for u, recent in enumerate(recents):
            before = len(parts)
            window = [self._successors.get(item) for item in reversed(recent[-width:])]
            for d, successors in enumerate(window):
                if len(successors.rows):
                    window_parts.append(successors)
                    window_offsets.append((u * width + d) * n)
            parts.extend(successors.ordered for successors in window)
            repeats = [rows_of.get(item, -1) for item in recent[-_REPEAT_SPAN:]]
            parts.append(np.array(repeats, dtype=np.int64))
            for back, row in enumerate(reversed(repeats)):
                if row >= 0:
                    repeat_keys.append(u * n + row)
                    repeat_back.append(back)
            parts.extend(top[u] for top in voted)
            parts.append(popular[u])
            parts.append(found[u])
            if alsos and alsos[u]:
                parts.append(np.array([rows_of.get(alsos[u], -1)], dtype=np.int64))
            lengths.append(sum(len(part) for part in parts[before:]))
        user, rows = first_in_order(
            np.repeat(np.arange(users), lengths), np.concatenate(parts) if parts else _NONE, n
        )
        ids = [ids_of[row] for row in rows.tolist()]
        if any(excludes):
            keep = [item not in excludes[u] for item, u in zip(ids, user.tolist(), strict=True)]
            if not all(keep):
                user, rows = user[keep], rows[keep]
                ids = [item for item, kept in zip(ids, keep, strict=True) if kept]
        features = self._features(
            user,
            rows,
            ids,
            hs,
            n,
            summed(window_parts, window_offsets),
            history,
            neighbours,
            (np.array(repeat_keys, dtype=np.int64), np.array(repeat_back, dtype=np.int64)),
        )
        bounds = np.searchsorted(user, np.arange(users + 1))
        return Block(rows, ids, bounds, features)

    def history_vote(self, recent: Sequence[str], k: int) -> list[Scored]:
        """The k items with the largest history vote for a user whose recent items are
        `recent`, best first, ties by row; only items with a vote."""
        n = max(1, len(self.encoder.ids))
        votes = self._votes([recent], self._successors, n)
        rows = best_per_user(votes, n, 1, k)[0]
        weights = votes.lookup(rows)
        ids = self.encoder.ids
        return [Scored(ids[row], float(w)) for row, w in zip(rows.tolist(), weights, strict=True)]

    def _votes(
        self, recents: Sequence[Sequence[str]], cache: SuccessorCache, n: int
    ) -> KeyedSparse:
        """For each user, the sum over its last `history` items r_d of
        d ** -history_exponent times the memory's P(row | r_d), keyed by (user, row).
        Sparse on purpose: its cost follows the successors' count, not the catalogue's."""
        parts: list[Successors] = []
        offsets: list[int] = []
        scales: list[float] = []
        decay = self._history_decay
        for u, recent in enumerate(recents):
            base = u * n
            for d, prev in enumerate(reversed(recent[-self.history :]) if decay else ()):
                successors = cache.get(prev)
                if len(successors.rows):
                    parts.append(successors)
                    offsets.append(base)
                    scales.append(decay[d])
        return summed(parts, offsets, scales)

    def _popular(self, excludes: Sequence[Collection[str]]) -> list[np.ndarray]:
        """Each user's `popular_candidates` most popular rows not excluded: one shared
        top list, filtered per user (the exact per-user answer where the exclusions
        reach past it)."""
        wanted = self.popular_candidates
        if wanted <= 0:
            return [_NONE] * len(excludes)
        rows_of = self.encoder.rows
        most = max((len(exclude) for exclude in excludes), default=0)
        shared_size = max(wanted, min(wanted + most, self.popularity.cache_size))
        shared = [s.item_id for s in self.popularity.top(shared_size)]
        popular: list[np.ndarray] = []
        for exclude in excludes:
            picked = shared[:wanted]
            if exclude:
                picked = [i for i in shared if i not in exclude][:wanted]
            if len(picked) < wanted and len(shared) == shared_size:
                picked = [s.item_id for s in self.popularity.top(wanted, exclude)]
            popular.append(np.array([rows_of.get(i, -1) for i in picked], dtype=np.int64))
        return popular

    def _found(
        self,
        hs: Sequence[torch.Tensor],
        excludes: Sequence[Collection[str]],
        founds: Sequence[list[Scored] | None],
    ) -> list[np.ndarray]:
        """Each user's index answer (top `retrieve` for h, exclusions applied) as rows;
        searched here, in one call, for the users whose answer is not given."""
        if self.retrieve <= 0 or len(self.index) == 0:
            return [_NONE] * len(hs)
        answers = list(founds)
        missing = [u for u, answer in enumerate(answers) if answer is None]
        if len(missing) == 1:
            u = missing[0]
            answers[u] = self.index.search(hs[u].numpy(), self.retrieve, excludes[u])
        elif missing:
            queries = np.stack([hs[u].numpy() for u in missing])
            searched = search_each(
                self.index, queries, self.retrieve, [excludes[u] for u in missing]
            )
            for u, answer in zip(missing, searched, strict=True):
                answers[u] = answer
        rows_of = self.encoder.rows
        return [
            np.array([rows_of.get(s.item_id, -1) for s in answer or ()], dtype=np.int64)
            for answer in answers
        ]

    def _features(
        self,
        user: np.ndarray,
        rows: np.ndarray,
        ids: list[str],
        hs: Sequence[torch.Tensor],
        n: int,
        window: KeyedSparse,
        history: KeyedSparse,
        neighbours: KeyedSparse | None,
        repeats: tuple[np.ndarray, np.ndarray],
    ) -> np.ndarray:
        """One float32 row per candidate, laid out as `self.layout`; the window's keys
        are (user * window + d) * n + row."""
        layout = self.layout
        features = np.zeros((len(rows), layout.size), dtype=np.float32)
        if not len(rows):
            return features
        # One matrix-vector product per user, as ranking one user computes it: one
        # product for the block would round differently and reorder near-ties.
        emb, bounds = self.encoder.emb, np.searchsorted(user, np.arange(len(hs) + 1))
        score = torch.from_numpy(features[:, layout.score])
        for u, h in enumerate(hs):
            start, end = int(bounds[u]), int(bounds[u + 1])
            if end > start:
                score[start:end] = emb[torch.from_numpy(rows[start:end])] @ h
        width = layout.window
        keys = user * n + rows
        window_keys = (user[:, None] * width + np.arange(width)) * n + rows[:, None]
        p = window.lookup(window_keys.ravel()).reshape(len(rows), width).astype(np.float32)
        features[:, layout.transitions] = p
        features[:, layout.transition_vote] = torch.log(
            torch.from_numpy(p) @ self._decay + 1e-4
        ).numpy()
        features[:, layout.history_vote] = np.log(history.lookup(keys) + 1e-4)
        features[:, layout.popularity] = np.log(self.popularity.shares(ids) + 1e-6)
        features[:, layout.cooccurrence_vote] = (
            _LOG_FLOOR if neighbours is None else np.log(neighbours.lookup(keys) + 1e-4)
        )
        # Repeat features: only the few recent items can have them.
        repeat_keys, back = repeats
        if len(repeat_keys):
            sorter = np.argsort(keys)
            at = np.minimum(np.searchsorted(keys, repeat_keys, sorter=sorter), len(keys) - 1)
            match = keys[sorter[at]] == repeat_keys
            candidate, back = sorter[at[match]], back[match]
            near = back < 2
            features[candidate[near], layout.is_last + back[near]] = 1.0
            np.add.at(features, (candidate, layout.repeats), 1.0)
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
        self.learn_many([context], [h], [item], [found])

    def learn_many(
        self,
        contexts: Sequence[UserContext],
        hs: Sequence[torch.Tensor],
        items: Sequence[str],
        founds: Sequence[list[Scored] | None],
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
            if item in self.encoder.rows and not (repeat and rare_now):
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
