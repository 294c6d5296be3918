"""Baselines every learned model has to beat, learned online like the real one.

- `RecentPopularity`: the most clicked items, counts decaying with a half-life.
- `CoVisitation`: item-to-next-item transition counts within a session, weighted by
  how close the two clicks were, voted on by the user's recent items. This is the
  "sequential rules" family that session-based evaluations find hard to beat
  (Ludewig and Jannach, "Evaluation of session-based recommendation algorithms", 2018,
  https://arxiv.org/abs/1803.09587).

Both are plain Python (NumPy only for a rare full ranking): no seed, nothing random.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from model.base import Interaction, OnlineRecommender, Scored, Update, UserContext
from model.transitions import DEFAULT_SESSION_GAP_S, TransitionMemory

# A popularity share is at most 1, so this weight makes popularity decide only between
# items whose co-visitation scores are equal (most often: both zero).
_POPULARITY_TIEBREAK = 1e-9
#: One hour: tuned on yoochoose clicks, where what sells changes within the day.
DEFAULT_HALF_LIFE_S = 3600.0


def count_click(
    popularity: RecentPopularity,
    transitions: TransitionMemory,
    context: UserContext,
    interaction: Interaction,
) -> bool:
    """The counting a session model does with each click before anything of its own:
    one click on the item in `popularity`, and the transitions to it from the user's
    recent items in `transitions` when the click is in the same session (no later than
    `session_gap_s` after the user's previous one). Returns that same-session test."""
    popularity.observe(interaction.item_id, interaction.timestamp)
    same_session = interaction.timestamp - context.last_timestamp <= transitions.session_gap_s
    transitions.observe(context.recent, interaction.item_id, same_session=same_session)
    return same_session


class RecentPopularity(OnlineRecommender):
    """Most clicked items, each click's weight halving every `half_life_s` seconds of
    event time (timestamps in the events, never the wall clock).

    Decaying every count at every event would cost O(items). Instead a click at time t
    adds 2 ** ((t - t0) / half_life_s) against a reference time t0: later clicks weigh
    more, which ranks items exactly as decaying the older ones would. When the weights
    grow large, t0 moves forward by whole half-lives, rescaling every count by an exact
    power of two (O(items), once per 64 half-lives).

    The top `cache_size` items are kept sorted as clicks arrive (a count only grows, so
    an item can only move up), which makes `top` O(k) unless the exclusions reach past
    the cache. Every event type counts as one click. Scores are shares of the decayed
    click total, in [0, 1].

    >>> pop = RecentPopularity(half_life_s=60.0)
    >>> ctx = pop.new_context()
    >>> for t, item in enumerate(["a", "b", "b"]):
    ...     ctx = pop.learn_one(ctx, Interaction("u", item, float(t))).context
    >>> [s.item_id for s in pop.recommend(ctx, k=2)]
    ['b', 'a']
    """

    name = "popularity"

    def __init__(
        self, half_life_s: float = DEFAULT_HALF_LIFE_S, max_recent: int = 50, cache_size: int = 256
    ):
        if not half_life_s > 0:
            raise ValueError(f"half_life_s must be positive, not {half_life_s}")
        self.half_life_s = float(half_life_s)
        self.max_recent = max_recent
        self.cache_size = cache_size
        self._ids: list[str] = []
        self._rows: dict[str, int] = {}
        self._counts: list[float] = []
        self._total = 0.0
        self._t0: float | None = None
        self._top: list[int] = []  # rows, best first by _key
        self._in_top: set[int] = set()
        # `_counts` as a float64 array for `shares_at`, kept current per click once
        # built; None until then, and after a rescale or a load.
        self._counts_array: np.ndarray | None = None

    def default_version(self) -> str:
        return f"popularity-{self.half_life_s:g}s"

    def __len__(self) -> int:
        return len(self._ids)

    def learn_one(self, context: UserContext, interaction: Interaction) -> Update:
        self.observe(interaction.item_id, interaction.timestamp)
        return Update(self.advance(context, interaction))

    def recommend(
        self, context: UserContext, k: int, exclude: Collection[str] = ()
    ) -> list[Scored]:
        return self.top(k, exclude)

    # The parts other models reuse for cold start and filling.

    def observe(self, item_id: str, timestamp: float) -> None:
        """Count one click on `item_id` at event time `timestamp` (seconds)."""
        if self._t0 is None:
            self._t0 = float(timestamp)
        exponent = (timestamp - self._t0) / self.half_life_s
        if exponent > 64.0:
            shift = math.floor(exponent)
            self._counts = [math.ldexp(c, -shift) for c in self._counts]
            self._total = math.ldexp(self._total, -shift)
            self._t0 += shift * self.half_life_s
            exponent -= shift
            # Counts that underflowed to zero now tie and fall back to row order.
            self._rebuild_top()
            self._counts_array = None
        weight = 2.0**exponent

        row = self._rows.get(item_id)
        if row is None:
            row = len(self._ids)
            self._rows[item_id] = row
            self._ids.append(item_id)
            self._counts.append(0.0)
        self._counts[row] += weight
        self._total += weight
        self._promote(row)
        array = self._counts_array
        if array is not None:
            if row + 1 >= len(array):  # keep a zero slot past the last row
                array = self._counts_array = np.concatenate([array, np.zeros(len(array) + 2)])
            array[row] = self._counts[row]

    def share(self, item_id: str) -> float:
        """The item's share of the decayed click total; 0.0 for unknown items."""
        row = self._rows.get(item_id)
        return 0.0 if row is None or self._total == 0.0 else self._counts[row] / self._total

    def shares(self, item_ids: Sequence[str]) -> np.ndarray:
        """`share` of each id as a float64 array (0.0 for unknown ids)."""
        if self._total == 0.0:
            return np.zeros(len(item_ids))
        # Called for every candidate of every ranked user: the bound method saves an
        # attribute lookup per id.
        row_of, counts = self._rows.get, self._counts
        values = [counts[r] if (r := row_of(i)) is not None else 0.0 for i in item_ids]
        return np.array(values) / self._total

    @property
    def ids(self) -> Sequence[str]:
        """The known ids by row. Clicks only append to it; a load replaces it."""
        return self._ids

    @property
    def rows(self) -> Mapping[str, int]:
        """Each known id's row (`ids` inverted)."""
        return self._rows

    def shares_at(self, rows: np.ndarray) -> np.ndarray:
        """`share` of the item at each row (-1: unknown, 0.0) as a float64 array: the
        values `shares` gives for their ids, without a lookup per id."""
        n = len(self._counts)
        if self._total == 0.0:
            return np.zeros(len(rows))
        array = self._counts_array
        if array is None:
            array = self._counts_array = np.array(self._counts + [0.0] * (n + 1))
        # The unknown rows (-1) read the spare slot past the known counts, which is 0.
        known = np.where(rows >= 0, rows, n)
        values: np.ndarray = array[known] / self._total
        return values

    def top(self, k: int, exclude: Collection[str] = ()) -> list[Scored]:
        """Best-first top-k by decayed popularity, skipping `exclude`; returns
        min(k, known items not excluded) results. Ties go to the earlier seen item."""
        if k <= 0:
            return []
        results = self._collect(self._top, k, exclude)
        if len(results) < k and len(self._top) < len(self._ids):
            # The exclusions ate into the cache: rank everything this once.
            counts = np.asarray(self._counts)
            rows = np.lexsort((np.arange(len(counts)), -counts))
            results = self._collect(rows.tolist(), k, exclude)
        return results

    def _collect(self, rows: list[int], k: int, exclude: Collection[str]) -> list[Scored]:
        results: list[Scored] = []
        for row in rows:
            item_id = self._ids[row]
            if item_id in exclude:
                continue
            results.append(Scored(item_id, self._counts[row] / self._total))
            if len(results) == k:
                break
        return results

    def _key(self, row: int) -> tuple[float, int]:
        return (-self._counts[row], row)

    def _promote(self, row: int) -> None:
        # Keeps _top equal to the first cache_size rows in _key order: only `row`'s
        # count changed and it only grew, so only `row` can need to move, and only up.
        if row in self._in_top:
            self._top.remove(row)
        elif len(self._top) >= self.cache_size:
            if self._key(row) >= self._key(self._top[-1]):
                return
            self._in_top.discard(self._top.pop())
        self._top.insert(bisect.bisect_left(self._top, self._key(row), key=self._key), row)
        self._in_top.add(row)

    def _rebuild_top(self) -> None:
        self._top = sorted(range(len(self._ids)), key=self._key)[: self.cache_size]
        self._in_top = set(self._top)

    def state_dict(self) -> dict[str, Any]:
        return {
            "half_life_s": self.half_life_s,
            "ids": list(self._ids),
            "counts": list(self._counts),
            "total": self._total,
            "t0": self._t0,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the learned counts with `state`'s (hyperparameters included)."""
        self.half_life_s = float(state["half_life_s"])
        self._ids = [str(i) for i in state["ids"]]
        self._rows = {item_id: row for row, item_id in enumerate(self._ids)}
        self._counts = [float(c) for c in state["counts"]]
        if len(self._counts) != len(self._ids):
            raise ValueError("popularity state has different numbers of ids and counts")
        self._total = float(state["total"])
        self._t0 = None if state["t0"] is None else float(state["t0"])
        self._rebuild_top()
        self._counts_array = None


class CoVisitation(OnlineRecommender):
    """Item-to-next-item transitions within a session, learned online.

    Learning: a click on item j adds weight 1/d to the transition i -> j for each of the
    user's previous `window` clicks i, d = 1 for the immediately previous one, and
    `backward_weight` / d to j -> i (co-occurrence in the other direction is weaker
    evidence, but it gives rarely-clicked items successors). Repeat clicks count too:
    i -> i is a transition like any other, and a quarter of next clicks in session
    data are repeats. Clicks more than `session_gap_s` after the user's previous one
    start a new session and add no transitions. Each item keeps its `max_neighbours`
    heaviest successors (pruned when twice as many accumulate) and the total weight
    ever added, so a weight divided by that total estimates P(next = j | clicked i).

    Recommending: the user's last `window` items vote with their successor
    distributions, the item clicked d steps ago weighted d ** -`recency_exponent`.
    Decayed popularity breaks ties and fills the list, so k items come back whenever k
    non-excluded items are known; a new user gets popularity.

    On the yoochoose-100k sample (train on `train_full`, then predict-then-learn every
    next click of the test day, no exclusions) the defaults score HR@20 0.698 and
    MRR@20 0.372; with no repeat transitions they scored 0.52 and 0.22, and popularity
    alone 0.19 and 0.05.

    >>> cv = CoVisitation()
    >>> ctx = {u: cv.new_context() for u in "xyz"}
    >>> for u in "xyz":
    ...     for t, item in enumerate(["a", "b", "c"]):
    ...         ctx[u] = cv.learn_one(ctx[u], Interaction(u, item, float(t))).context
    >>> [s.item_id for s in cv.recommend(UserContext(recent=("a",)), k=3)]
    ['b', 'c', 'a']
    """

    name = "covisit"

    def __init__(
        self,
        window: int = 5,
        backward_weight: float = 0.25,
        recency_exponent: float = 1.5,
        max_neighbours: int = 100,
        session_gap_s: float = DEFAULT_SESSION_GAP_S,
        half_life_s: float = DEFAULT_HALF_LIFE_S,
        max_recent: int = 50,
    ):
        self.recency_exponent = recency_exponent
        self.max_recent = max_recent
        self.popularity = RecentPopularity(half_life_s, max_recent=max_recent)
        # The counts are the same memory the torch model mixes in (model/transitions.py).
        self.transitions = TransitionMemory(
            window=window,
            backward_weight=backward_weight,
            max_neighbours=max_neighbours,
            session_gap_s=session_gap_s,
        )

    @property
    def window(self) -> int:
        return self.transitions.window

    def default_version(self) -> str:
        return f"covisit-w{self.window}"

    def learn_one(self, context: UserContext, interaction: Interaction) -> Update:
        count_click(self.popularity, self.transitions, context, interaction)
        return Update(self.advance(context, interaction))

    def neighbours(self, item_id: str) -> dict[str, float]:
        """Estimated P(next = j | clicked item_id) for the kept successors j (a copy)."""
        return self.transitions.successors(item_id)

    def recommend(
        self, context: UserContext, k: int, exclude: Collection[str] = ()
    ) -> list[Scored]:
        if k <= 0:
            return []
        # The last `window` items vote for their successors, the nearer more.
        weights = [d**-self.recency_exponent for d in range(1, self.window + 1)]
        scores = {
            item: sum(w * p for w, p in zip(weights, probabilities, strict=True))
            for item, probabilities in self.transitions.votes(context.recent).items()
        }
        # The k most popular non-excluded items are enough to fill any shortfall.
        for scored in self.popularity.top(k, exclude):
            scores.setdefault(scored.item_id, 0.0)
        share = self.popularity.share
        ranked = heapq.nsmallest(
            k,
            (
                (-(score + _POPULARITY_TIEBREAK * share(item)), item)
                for item, score in scores.items()
                if item not in exclude
            ),
        )
        return [Scored(item, -neg) for neg, item in ranked]

    def state_dict(self) -> dict[str, Any]:
        return {
            "recency_exponent": self.recency_exponent,
            "transitions": self.transitions.state_dict(),
            "popularity": self.popularity.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the learned transitions with `state`'s (hyperparameters included)."""
        self.recency_exponent = float(state["recency_exponent"])
        self.transitions.load_state_dict(state["transitions"])
        self.popularity.load_state_dict(state["popularity"])
