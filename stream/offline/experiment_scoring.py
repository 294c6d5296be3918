"""The clicks an experiment report scores, per arm and user (issue #16).

The scoring rule is the worker's live one (stream/worker/quality.py, `_apply` in
stream/worker/pipeline.py), replayed from the recommendations topic: each user's events
in the order they were emitted; the click that caused event i+1 (its
`source_event_id`, looked up in the clicks topic) is scored against event i's list:
a hit if the clicked item is in the list, reciprocal rank 1/(position+1), else 0. It
counts under event i's `variant` (the arm that served the list the user saw). A
user's first event scores nothing, nor does a click after an empty list. So the
totals equal the live counters (streamrec_online_predictions_total, _hits_total and
_reciprocal_rank_total, summed over workers) on the same stream, except for users a
worker evicted (stream/worker/retention.py): live, their next click starts cold and is
not scored; here it is scored against the list they last saw.

- `k` cuts each list to its first k items (None: the whole list, as live).
- `since`/`until` keep the clicks scored against a list whose `event_time` (the time
  of the click it followed) is in [since, until).
- A repeated event (the user's `source_event_id` among their last `dedup_window`
  ones, e.g. re-emitted after a crash) is not scored again; its list replaces the
  user's last one, as the worker's record does after the re-application. The window
  is the worker's (STREAMREC_DEDUP_WINDOW): a click id repeated after it is applied,
  emitted and scored again live, and so here.
- A click missing from the clicks topic (retention) cannot be scored and is counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from stream.offline.bootstrap import UserTotals
from stream.offline.experiment_topics import Served, Unreadable


@dataclass
class Tally:
    """Scored clicks per arm and user: variant -> user -> [clicks, hits, reciprocal
    rank sum]; `first_time` is the earliest list each arm was scored on (the arms'
    order of appearance); the other fields count what was left out, and why."""

    users: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    first_time: dict[str, float] = field(default_factory=dict)
    repeated: int = 0
    unmatched: int = 0
    unreadable: int = 0

    def add(self, variant: str, user: str, reciprocal_rank: float, at: float) -> None:
        row = self.users.setdefault(variant, {}).setdefault(user, [0, 0, 0.0])
        row[0] += 1
        row[1] += reciprocal_rank > 0
        row[2] += reciprocal_rank
        self.first_time[variant] = min(at, self.first_time.get(variant, at))

    def totals(self, variant: str) -> UserTotals:
        rows = np.array(list(self.users[variant].values()), dtype=np.float64).reshape(-1, 3)
        return UserTotals(rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64), rows[:, 2])


def score_clicks(
    served: Iterable[Served | Unreadable],
    clicked: Mapping[tuple[str, str], str],
    *,
    dedup_window: int,
    k: int | None = None,
    since: float | None = None,
    until: float | None = None,
) -> Tally:
    """Score every click the module docstring's rule scores. `served` in topic order
    (each user's events in emission order); `clicked` maps (user id, event id) to the
    clicked item. Pure; holds one list and `dedup_window` event ids per user."""
    tally = Tally()
    shown: dict[str, Served] = {}
    applied: dict[str, tuple[str, ...]] = {}
    for event in served:
        if isinstance(event, Unreadable):
            tally.unreadable += 1
            continue
        user = event.user_id
        previous = shown.get(user)
        shown[user] = event
        ids = applied.get(user, ())
        if event.source_event_id in ids:
            tally.repeated += 1
            continue
        # The worker's window, kept as it keeps it (ClickProcessor.process_batch).
        applied[user] = (*ids, event.source_event_id)[-dedup_window:]
        if previous is None or not previous.items:
            continue
        if (since is not None and previous.event_time < since) or (
            until is not None and previous.event_time >= until
        ):
            continue
        item = clicked.get((user, event.source_event_id))
        if item is None:
            tally.unmatched += 1
            continue
        items = previous.items[:k] if k else previous.items
        rank = items.index(item) if item in items else None
        tally.add(
            previous.variant, user, 0.0 if rank is None else 1.0 / (rank + 1), previous.event_time
        )
    return tally


__all__ = ["Tally", "score_clicks"]
