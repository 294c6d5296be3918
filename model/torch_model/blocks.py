"""Candidate blocks: the candidates and feature rows of several users at once, built
as arrays (`MixRanker`'s half that reads the memories, the index and the encoder; the
mixer that ranks and learns from them is in ranker.py).

Each user's arithmetic is done in the order one user alone would take it, so a block of
many users ranks each exactly as a block of one (the array helpers are in
candidates.py).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.base import ItemIndex, Scored, UserContext, search_each
from model.baselines import RecentPopularity
from model.torch_model.candidates import (
    NO_ROWS,
    KeyedSparse,
    RowMap,
    SuccessorCache,
    Successors,
    best_per_user,
    first_in_order,
    in_order,
    summed,
)
from model.torch_model.cold import ContentSide
from model.torch_model.encoder import GruEncoder
from model.transitions import TransitionMemory

REPEAT_SPAN = 10  # how many of the user's last items count as repeat candidates
_LOG_FLOOR = math.log(1e-4)  # a log vote of zero evidence


@dataclass(frozen=True, slots=True)
class Block:
    """The candidates of several users and their features: user u's are
    `rows[of(u)]`, with item ids `ids[of(u)]` and feature rows `features[of(u)]`, in
    candidate order (sources in the order `MixRanker` lists them, each id at its first
    appearance, then a content-aware model's cold items, whose row is -1)."""

    rows: np.ndarray
    ids: list[str]
    bounds: np.ndarray
    features: np.ndarray

    def of(self, u: int) -> slice:
        return slice(int(self.bounds[u]), int(self.bounds[u + 1]))


@dataclass(frozen=True)
class FeatureLayout:
    """The columns of a candidate's feature row, for a transition window of `window`;
    the two content columns only in a model that has content (cold.py)."""

    window: int
    content: bool = False

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
        """how often j occurs in the last `REPEAT_SPAN` items"""
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
    def content_similarity(self) -> int:
        """content similarity of j to the user's recent items"""
        return 8 + self.window

    @property
    def cold(self) -> int:
        """j has content and no click yet"""
        return 9 + self.window

    @property
    def size(self) -> int:
        return 10 + self.window if self.content else 8 + self.window


class CandidateBlocks:
    """Builds `Block`s from the attributes below, which `MixRanker` sets and keeps
    current (a checkpoint load replaces some of them)."""

    encoder: GruEncoder
    index: ItemIndex
    popularity: RecentPopularity
    transitions: TransitionMemory
    cooccurrence: TransitionMemory | None
    retrieve: int
    history: int
    history_candidates: int
    popular_candidates: int
    layout: FeatureLayout
    # The transition window's weights per distance (d ** -1.5), and the history vote's
    # (d ** -history_exponent).
    _decay: torch.Tensor
    _history_decay: list[float]
    _successors: SuccessorCache
    _neighbours: SuccessorCache | None
    _popularity_rows: RowMap
    content: ContentSide | None

    def block(
        self,
        contexts: Sequence[UserContext],
        hs: Sequence[torch.Tensor],
        excludes: Sequence[Collection[str]],
        founds: Sequence[list[str] | None],
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
        # The window's successor lists, each with its (user, distance d).
        window_parts: list[Successors] = []
        window_at: list[tuple[int, int]] = []
        repeat_keys: list[int] = []
        repeat_back: list[int] = []
        for u, recent in enumerate(recents):
            before = len(parts)
            window = [self._successors.get(item) for item in reversed(recent[-width:])]
            for d, successors in enumerate(window):
                if len(successors.rows):
                    window_parts.append(successors)
                    window_at.append((u, d))
            parts.extend(successors.rows for successors in window)
            repeats = [rows_of.get(item, -1) for item in recent[-REPEAT_SPAN:]]
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
            np.repeat(np.arange(users), lengths), np.concatenate(parts) if parts else NO_ROWS, n
        )
        if any(excludes):
            # By (user, row) key: an id the encoder does not know is no candidate anyway.
            row_of = rows_of.get
            banned = [
                u * n + row
                for u, exclude in enumerate(excludes)
                for row in map(row_of, exclude, itertools.repeat(-1))
                if row >= 0
            ]
            if banned:
                # Both sides unique, as assume_unique needs: first_in_order kept one key
                # per (user, row), and np.unique drops an id an exclude repeats.
                keep = ~np.isin(
                    user * n + rows, np.unique(np.array(banned, dtype=np.int64)), assume_unique=True
                )
                if not keep.all():
                    user, rows = user[keep], rows[keep]
        ids = [ids_of[row] for row in rows.tolist()]
        features = self._features(
            user,
            rows,
            hs,
            n,
            (window_parts, window_at),
            history,
            neighbours,
            (np.array(repeat_keys, dtype=np.int64), np.array(repeat_back, dtype=np.int64)),
        )
        bounds = np.searchsorted(user, np.arange(users + 1))
        block = Block(rows, ids, bounds, features)
        if self.content is not None:
            block = self.content.extend(
                block, contexts, hs, excludes, alsos, self.layout, self.popularity
            )
        return block

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
            return [NO_ROWS] * len(excludes)
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
        founds: Sequence[list[str] | None],
    ) -> list[np.ndarray]:
        """Each user's index answer (the ids of the top `retrieve` for h, exclusions
        applied) as rows; searched here, in one call, for the users whose answer is not
        given."""
        if self.retrieve <= 0 or len(self.index) == 0:
            return [NO_ROWS] * len(hs)
        answers = list(founds)
        missing = [u for u, answer in enumerate(answers) if answer is None]
        if len(missing) == 1:
            u = missing[0]
            found = self.index.search(hs[u].numpy(), self.retrieve, excludes[u])
            answers[u] = [s.item_id for s in found]
        elif missing:
            queries = np.stack([hs[u].numpy() for u in missing])
            searched = search_each(
                self.index, queries, self.retrieve, [excludes[u] for u in missing]
            )
            for u, answer in zip(missing, searched, strict=True):
                answers[u] = [s.item_id for s in answer]
        row_of = self.encoder.rows.get
        return [
            np.array([row_of(item, -1) for item in answer or ()], dtype=np.int64)
            for answer in answers
        ]

    def _features(
        self,
        user: np.ndarray,
        rows: np.ndarray,
        hs: Sequence[torch.Tensor],
        n: int,
        window: tuple[list[Successors], list[tuple[int, int]]],
        history: KeyedSparse,
        neighbours: KeyedSparse | None,
        repeats: tuple[np.ndarray, np.ndarray],
    ) -> np.ndarray:
        """One float32 row per candidate, laid out as `self.layout`; `window` holds the
        successor lists of each user's last items, each with its (user, d)."""
        layout = self.layout
        features = np.zeros((len(rows), layout.size), dtype=np.float32)
        if not len(rows):
            return features
        # e_j . h row by row: one row's sum does not depend on the other rows (a
        # matrix product's blocking would), so a block of many users scores each
        # candidate as a block of one.
        queries = torch.stack(list(hs)).numpy()
        features[:, layout.score] = np.einsum(
            "ij,ij->i", self.encoder.emb.numpy()[rows], queries[user]
        )
        # Keys are unique (one candidate per user and row); each lookup below is made
        # with ascending keys and its answer put back in candidate order.
        keys = user * n + rows
        order = np.argsort(keys)
        ascending = keys[order]
        p = self._window_probabilities(window, ascending, order, n)
        features[:, layout.transitions] = p
        features[:, layout.transition_vote] = torch.log(
            torch.from_numpy(p) @ self._decay + 1e-4
        ).numpy()
        features[:, layout.history_vote] = np.log(in_order(history, ascending, order) + 1e-4)
        popularity = self.popularity
        encoder = self.encoder
        at = self._popularity_rows.rows(encoder.ids, encoder.rows, popularity.ids, popularity.rows)
        features[:, layout.popularity] = np.log(popularity.shares_at(at[rows]) + 1e-6)
        features[:, layout.cooccurrence_vote] = (
            _LOG_FLOOR
            if neighbours is None
            else np.log(in_order(neighbours, ascending, order) + 1e-4)
        )
        # Repeat features: only the few recent items can have them.
        repeat_keys, back = repeats
        if len(repeat_keys):
            at = np.minimum(np.searchsorted(ascending, repeat_keys), len(keys) - 1)
            match = ascending[at] == repeat_keys
            candidate, back = order[at[match]], back[match]
            near = back < 2
            features[candidate[near], layout.is_last + back[near]] = 1.0
            np.add.at(features, (candidate, layout.repeats), 1.0)
        return features

    def _window_probabilities(
        self,
        window: tuple[list[Successors], list[tuple[int, int]]],
        ascending: np.ndarray,
        order: np.ndarray,
        n: int,
    ) -> np.ndarray:
        """The `layout.transitions` columns (float32) of the candidates whose keys
        (user * n + row) are `ascending`, `order` mapping them back to candidate order:
        P(row | r_d) from the window's successor lists, each given with its (user, d),
        and 0 where a list lacks the candidate. A list's rows are distinct and each
        (user, d) has one list, so no two entries fall in one cell: each value is put
        where it belongs, one search for all."""
        parts, at = window
        p = np.zeros((len(ascending), self.layout.window), dtype=np.float32)
        if not parts:
            return p
        lengths = [len(part.rows) for part in parts]
        user = np.repeat(np.array([u for u, _ in at], dtype=np.int64), lengths)
        distance = np.repeat(np.array([d for _, d in at], dtype=np.int64), lengths)
        keys = user * n + np.concatenate([part.rows for part in parts])
        found_at = np.minimum(np.searchsorted(ascending, keys), len(ascending) - 1)
        found = ascending[found_at] == keys
        weights = np.concatenate([part.weights for part in parts])
        p[order[found_at[found]], distance[found]] = weights[found]
        return p
