"""Item-to-item transition memory: the counting half of the torch model's scorer.

Counts which items follow which within a session, so `TorchRecommender` can turn a
user's last few clicks into per-candidate evidence P(next = j | clicked r_d) for each
of the `window` most recent clicks r_1 (the last) ... r_window. The memory holds no
weights of its own: how much each distance, repeat and embedding signal counts is
learned by the torch model's mixer (see `model.torch_model`).

The counting follows the sequential-rules family that session-based evaluations find
hard to beat (Ludewig and Jannach, "Evaluation of session-based recommendation
algorithms", 2018, https://arxiv.org/abs/1803.09587), the same as `CoVisitation`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from model.base import Interaction

# Thirty minutes: the usual web-analytics session timeout, and on yoochoose 99% of a
# session's consecutive clicks are closer than that.
DEFAULT_SESSION_GAP_S = 1800.0
# The share of a user's consecutive clicks `learned_session_gap` keeps within a session.
SESSION_GAP_QUANTILE = 0.9


def learned_session_gap(events: Iterable[Interaction]) -> float:
    """A session gap (seconds) on the data's own time scale: the 90th percentile of the
    pauses between each user's consecutive clicks, never below `DEFAULT_SESSION_GAP_S`.

    Where users click in bursts minutes apart (sessions, or a rating sitting) the
    percentile is short and the 30-minute default stands. Where a user's clicks are
    typically a day apart, as in a ratings file, the default would count no transition
    at all and leave `covisit` ranking by popularity alone; the percentile then grows
    the gap to cover nine in ten of those pauses. Events in any order; the default when
    no user clicked twice.

    >>> day = 86_400.0
    >>> learned_session_gap(Interaction("u", "i", n * day) for n in range(5))
    86400.0
    >>> learned_session_gap(Interaction("u", "i", n * 60.0) for n in range(5))
    1800.0
    """
    stamps: dict[str, list[float]] = {}
    for event in events:
        stamps.setdefault(event.user_id, []).append(event.timestamp)
    gaps: list[float] = []
    for times in stamps.values():
        times.sort()
        gaps.extend(later - earlier for earlier, later in zip(times, times[1:], strict=False))
    gaps.sort()
    if not gaps:
        return DEFAULT_SESSION_GAP_S
    nearest_rank = math.ceil(SESSION_GAP_QUANTILE * len(gaps)) - 1
    return max(DEFAULT_SESSION_GAP_S, gaps[nearest_rank])


class TransitionMemory:
    """Session transition counts i -> j, learned one click at a time.

    A click on j within `session_gap_s` of the user's previous click adds 1/d to
    i -> j for each of the previous `window` clicks i (d = 1 for the last one) and
    `backward_weight` / d to j -> i. Repeats count (i -> i): re-clicks are common in
    session data. Each item keeps its `max_neighbours` heaviest successors (pruned
    when twice as many accumulate) and the total weight ever added from it, so a
    weight over that total estimates P(next = j | clicked i).

    Deterministic: no randomness; ties keep insertion order.

    >>> memory = TransitionMemory(window=2)
    >>> memory.observe(("a",), "b", same_session=True)
    >>> memory.observe(("a", "b"), "c", same_session=True)
    >>> votes = memory.votes(("a", "b"))  # last click "b", the one before it "a"
    >>> [round(p, 2) for p in votes["c"]]  # P(c | b), P(c | a)
    [0.8, 0.33]
    """

    def __init__(
        self,
        window: int = 5,
        backward_weight: float = 0.25,
        max_neighbours: int = 100,
        session_gap_s: float = DEFAULT_SESSION_GAP_S,
    ):
        if window < 1 or max_neighbours < 1:
            raise ValueError("window and max_neighbours must be at least 1")
        self.window = window
        self.backward_weight = backward_weight
        self.max_neighbours = max_neighbours
        self.session_gap_s = float(session_gap_s)
        self._next: dict[str, dict[str, float]] = {}
        self._totals: dict[str, float] = {}

    def observe(self, recent: Sequence[str], item: str, *, same_session: bool) -> None:
        """Count the click on `item` after the user's `recent` items (oldest first)."""
        if not recent or not same_session:
            return
        for distance, prev in enumerate(reversed(recent[-self.window :]), 1):
            self._add(prev, item, 1.0 / distance)
            if self.backward_weight > 0 and prev != item:
                self._add(item, prev, self.backward_weight / distance)

    def _add(self, source: str, target: str, weight: float) -> None:
        successors = self._next.setdefault(source, {})
        successors[target] = successors.get(target, 0.0) + weight
        self._totals[source] = self._totals.get(source, 0.0) + weight
        if len(successors) > 2 * self.max_neighbours:
            # Amortised O(1) per insert; the sort is stable, so ties keep their order.
            # A new dict, not the old one cleared: readers of `weights` may rely on a
            # dict's keys only ever growing.
            kept = sorted(successors.items(), key=lambda kv: -kv[1])[: self.max_neighbours]
            self._next[source] = dict(kept)

    def successors(self, item_id: str) -> dict[str, float]:
        """Estimated P(next = j | clicked item_id) for the kept successors j (a copy)."""
        total = self._totals.get(item_id, 0.0)
        return {j: w / total for j, w in self._next.get(item_id, {}).items()}

    def weights(self, item_id: str) -> tuple[Mapping[str, float], float]:
        """The kept successors of `item_id` with their raw weights, and the total
        weight ever added from it (P(j | item_id) is weight / total). The mapping is
        the memory's own, not a copy: its weights change with each `observe`, and its
        keys only grow, in insertion order, until a prune or a load replaces it."""
        return self._next.get(item_id, {}), self._totals.get(item_id, 0.0)

    def votes(self, recent: Sequence[str]) -> dict[str, list[float]]:
        """For every kept successor j of the last `window` items of `recent`, the list
        [P(j | r_1), ..., P(j | r_window)], r_1 being the last item (0.0 where j is not
        a kept successor of r_d, or the user has fewer than d items)."""
        votes: dict[str, list[float]] = {}
        for d, prev in enumerate(reversed(recent[-self.window :])):
            successors = self._next.get(prev)
            if not successors:
                continue
            total = self._totals[prev]
            for item, weight in successors.items():
                row = votes.get(item)
                if row is None:
                    row = votes[item] = [0.0] * self.window
                row[d] += weight / total
        return votes

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "backward_weight": self.backward_weight,
            "max_neighbours": self.max_neighbours,
            "session_gap_s": self.session_gap_s,
            "next": {i: dict(successors) for i, successors in self._next.items()},
            "totals": dict(self._totals),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the counts (and hyperparameters) with `state`'s."""
        self.window = int(state["window"])
        self.backward_weight = float(state["backward_weight"])
        self.max_neighbours = int(state["max_neighbours"])
        self.session_gap_s = float(state["session_gap_s"])
        self._next = {
            str(i): {str(j): float(w) for j, w in successors.items()}
            for i, successors in state["next"].items()
        }
        self._totals = {str(i): float(w) for i, w in state["totals"].items()}
