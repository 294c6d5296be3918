"""Offline evaluation: ranking metrics and four replay protocols over any `Recommender`.

Every protocol replays events in time order through `learn_one`, so the model under
test learns exactly as it does in the live worker, and scores `recommend` lists against
the item the user actually clicked:

- `prequential`: test-then-learn on every event (Gama et al., "On evaluating stream
  learning algorithms", 2013, https://doi.org/10.1007/s10994-012-5320-9).
- `last_out`: each user's last event held out, full ranking with the user's training
  items excluded.
- `session_split`: learn a training file, then the next-item task on a test file of
  sessions, as in session-rec (Ludewig and Jannach, "Evaluation of session-based
  recommendation algorithms", 2018, https://arxiv.org/abs/1803.09587), except that the
  model keeps learning from the test clicks as they stream in.
- `cold_start`: prequential with every item's content known up front, scored also on
  the clicks on items with few earlier clicks (issue 15).

Every ranking leaves out what the worker's exclusion policy would (`exclude`, see
`model.base.excluded`: the worker's default `seen` unless told otherwise), for the same
context, so a figure is what the worker's users get.

Each returns a dict: `HR@K`, `MRR@K`, `NDCG@K` for every K, `coverage`, `predictions`,
`seconds` (wall time of the replay) and `events_per_s` (events given to the protocol
per second of wall time, learning and scoring together).

`batch_size` (default 1, the one-event path) feeds `learn_many` and `recommend_many`
chunks of that many events in stream order, as a batching worker would. Where a chunk's
lists are scored against later clicks (prequential, and session-split's test phase) a
chunk also ends before a user's second event in it, so no list is scored against a
click its model has already learned from; learning-only phases use full chunks.

Nothing here is random: the results are a function of the model's seed and the events.
Pure Python over the `Recommender` protocol; no stream, Kafka or Redis imports.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from model.base import HISTORY_MAX, Interaction, Recommender, UserContext, excluded, remembered
from model.baselines import DEFAULT_HALF_LIFE_S
from model.content import ContentAware, ItemContent

DEFAULT_KS = (10, 20)
#: `cold_start` counts a click as on a new item when the item had fewer earlier clicks.
NEW_ITEM_CLICKS = 5

#: Called with how many events were processed since the last call; the calls of one
#: protocol run add up to the number of events it was given.
Progress = Callable[[int], object]
#: Called once per scored prediction with (user_id, ranked item ids, target item id).
OnPrediction = Callable[[str, list[str], str], object]

_PROGRESS_EVERY = 1024


class RankingMetrics:
    """HR@K, MRR@K and NDCG@K for one target per ranked list, plus catalogue coverage.

    For a list whose first occurrence of the target is at 1-based rank r:
    HR@K = 1 if r <= K, MRR@K = 1/r if r <= K, NDCG@K = 1/log2(r + 1) if r <= K (the
    ideal DCG of a single relevant item is 1); all three are 0 when the target is not
    in the top K. Each is averaged over the scored predictions.

    Coverage = |distinct items in any scored list's top max(K)| / |distinct items the
    model has learned from|, the catalogue as it stands at the end of the run (`see`
    is called for every event passed to `learn_one`; items seen only as held-out
    targets do not count, since no model can recommend them). 0.0 before any `see`.

    >>> metrics = RankingMetrics(ks=(1, 3))
    >>> metrics.add(["a", "b", "c"], "c")
    >>> metrics.see("c")
    >>> summary = metrics.summary()
    >>> summary["HR@1"], summary["HR@3"], round(summary["MRR@3"], 4), summary["predictions"]
    (0.0, 1.0, 0.3333, 1)
    """

    def __init__(self, ks: Sequence[int] = DEFAULT_KS) -> None:
        self.ks = check_ks(ks)
        self.max_k = max(self.ks)
        self.predictions = 0
        self._hits = dict.fromkeys(self.ks, 0)
        self._rr = dict.fromkeys(self.ks, 0.0)
        self._ndcg = dict.fromkeys(self.ks, 0.0)
        self._recommended: set[str] = set()
        self._catalogue: set[str] = set()

    def add(self, ranked: Sequence[str], target: str) -> None:
        """Score one best-first list against the item that was clicked. O(max K)."""
        top = list(ranked[: self.max_k])
        self._recommended.update(top)
        self.predictions += 1
        try:
            rank = top.index(target) + 1
        except ValueError:
            return
        for k in self.ks:
            if rank <= k:
                self._hits[k] += 1
                self._rr[k] += 1.0 / rank
                self._ndcg[k] += 1.0 / math.log2(rank + 1)

    def see(self, item_id: str) -> None:
        """Count `item_id` into the catalogue (the coverage denominator)."""
        self._catalogue.add(item_id)

    @property
    def coverage(self) -> float:
        return len(self._recommended) / len(self._catalogue) if self._catalogue else 0.0

    def summary(self) -> dict[str, Any]:
        """Metric name -> value, K ascending, then `coverage` and `predictions`."""
        n = self.predictions
        result: dict[str, Any] = {}
        for k in self.ks:
            result[f"HR@{k}"] = self._hits[k] / n if n else 0.0
            result[f"MRR@{k}"] = self._rr[k] / n if n else 0.0
            result[f"NDCG@{k}"] = self._ndcg[k] / n if n else 0.0
        result["coverage"] = self.coverage
        result["predictions"] = n
        return result


def check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    """The cut-offs sorted and deduplicated; ValueError unless all are integers >= 1."""
    ks = tuple(ks)
    if not ks or not all(isinstance(k, int) and k >= 1 for k in ks):
        raise ValueError(f"cut-offs K must be integers >= 1, not {list(ks)}")
    return tuple(sorted(set(ks)))


def auto_half_life(protocol: str, events: Sequence[Interaction]) -> float:
    """A popularity half-life (seconds) that suits how `protocol` uses the counts.

    Counts should decay no faster than they go stale before they are used. `last-out`
    ranks every held-out event with the counts as they stand at the end of the data,
    whenever that event happened, so the counts are up to the data's whole time span
    stale: the half-life is twice that span (the first event to the last; 8,214 days
    on ml-latest-small), so the oldest click keeps 71% of the newest one's weight.
    There popularity scores HR@10 0.038 instead of 0.000 with 1 h (0.033 with the
    span itself, 0.039 with no decay at all). `prequential`, `session-split` and live
    serving rank each event with counts that are current, so recency pays and the
    half-life is `DEFAULT_HALF_LIFE_S` (1 h, tuned on yoochoose). Never below that.

    >>> day = [Interaction("u", "i", t) for t in (0.0, 86_400.0)]
    >>> auto_half_life("last-out", day), auto_half_life("session-split", day)
    (172800.0, 3600.0)
    """
    if protocol == "last-out" and events:
        stamps = [event.timestamp for event in events]
        return max(DEFAULT_HALF_LIFE_S, 2.0 * (max(stamps) - min(stamps)))
    return DEFAULT_HALF_LIFE_S


def time_ordered(events: Iterable[Interaction]) -> list[Interaction]:
    """Events by timestamp; the sort is stable, so the given order breaks ties."""
    return sorted(events, key=lambda event: event.timestamp)


def chunks(
    events: Sequence[Interaction], size: int, *, distinct_users: bool = False
) -> Iterator[Sequence[Interaction]]:
    """Consecutive runs of at most `size` events; with `distinct_users`, a run also ends
    before an event whose user already has one in it. ValueError if size < 1.

    >>> events = [Interaction(u, "i", 0.0) for u in "abac"]
    >>> [[e.user_id for e in c] for c in chunks(events, 3)]
    [['a', 'b', 'a'], ['c']]
    >>> [[e.user_id for e in c] for c in chunks(events, 3, distinct_users=True)]
    [['a', 'b'], ['a', 'c']]
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, not {size}")
    start, users = 0, set[str]()
    for position, event in enumerate(events):
        full = position - start == size
        if full or (distinct_users and event.user_id in users):
            yield events[start:position]
            start, users = position, set()
        users.add(event.user_id)
    if start < len(events):
        yield events[start:]


def prequential(
    model: Recommender,
    events: Sequence[Interaction],
    ks: Sequence[int] = DEFAULT_KS,
    progress: Progress | None = None,
    on_prediction: OnPrediction | None = None,
    batch_size: int = 1,
    exclude: str = "seen",
    history_max: int = HISTORY_MAX,
) -> dict[str, Any]:
    """Test-then-learn: for every event in time order, score
    `recommend(user's context before the event, max K, exclude)` (the list the worker
    showed after the user's previous click) against the clicked item, then learn it.
    Every event is scored, a user's first one included (a cold start: the model answers
    from what other users taught it), so predictions == len(events). With
    `exclude="none"` re-clicks count as hits. With `batch_size` > 1 each chunk of
    distinct users is ranked as the model stood before the chunk, then learned."""
    metrics = RankingMetrics(ks)
    replay = _Replay(model, metrics, progress, exclude, history_max)
    started = time.perf_counter()
    if batch_size == 1:
        for event in time_ordered(events):
            context = replay.context(event.user_id)
            leave_out = replay.excluded(event.user_id, context)
            ranked = _ids(model.recommend(context, metrics.max_k, leave_out))
            _score(metrics, on_prediction, event.user_id, ranked, event.item_id)
            replay.learn(event)
        return replay.finish(started, len(events))
    for chunk in chunks(time_ordered(events), batch_size, distinct_users=True):
        contexts = [replay.context(event.user_id) for event in chunk]
        excludes = [replay.excluded(e.user_id, c) for e, c in zip(chunk, contexts, strict=True)]
        lists = model.recommend_many(contexts, metrics.max_k, excludes)
        for event, scored in zip(chunk, lists, strict=True):
            _score(metrics, on_prediction, event.user_id, _ids(scored), event.item_id)
        replay.learn_many(chunk)
    return replay.finish(started, len(events))


def last_out(
    model: Recommender,
    events: Sequence[Interaction],
    ks: Sequence[int] = DEFAULT_KS,
    progress: Progress | None = None,
    on_prediction: OnPrediction | None = None,
    batch_size: int = 1,
    exclude: str = "seen",
    history_max: int = HISTORY_MAX,
) -> dict[str, Any]:
    """Leave-last-out: each user's last event (by time; ties go to the later one in
    `events`) is held out and every other event is learned in time order. Then, in the
    held-out events' time order, each user's held-out item is scored against a full
    ranking `recommend(context, max K, exclude)`: the list the worker would show after
    the user's last training click. With `exclude="history"` every training item of the
    user (up to `history_max`) is left out, so a held-out item the user already had is
    always a miss.

    Users with a single event have nothing to learn a context from: their event is
    learned as training data and they are not scored. predictions == number of users
    with at least two events."""
    ordered = time_ordered(events)
    held_out = held_out_positions(ordered)

    metrics = RankingMetrics(ks)
    replay = _Replay(model, metrics, progress, exclude, history_max)
    started = time.perf_counter()
    training = [event for position, event in enumerate(ordered) if position not in held_out]
    for chunk in chunks(training, batch_size):
        replay.learn_many(chunk)
    scored = [ordered[position] for position in sorted(held_out)]
    for chunk in chunks(scored, batch_size):
        contexts = [replay.context(event.user_id) for event in chunk]
        excludes = [replay.excluded(e.user_id, c) for e, c in zip(chunk, contexts, strict=True)]
        if batch_size == 1:
            lists = [model.recommend(contexts[0], metrics.max_k, exclude=excludes[0])]
        else:
            lists = model.recommend_many(contexts, metrics.max_k, excludes)
        for event, ranked in zip(chunk, lists, strict=True):
            _score(metrics, on_prediction, event.user_id, _ids(ranked), event.item_id)
            replay.tick()
    return replay.finish(started, len(events))


def held_out_positions(ordered: Sequence[Interaction]) -> set[int]:
    """Last-out's held-out events: the position of each user's last event in `ordered`,
    for users with at least two."""
    last: dict[str, int] = {}
    count: dict[str, int] = {}
    for position, event in enumerate(ordered):
        last[event.user_id] = position
        count[event.user_id] = count.get(event.user_id, 0) + 1
    return {position for user, position in last.items() if count[user] > 1}


def session_split(
    model: Recommender,
    train_events: Sequence[Interaction],
    test_events: Sequence[Interaction],
    ks: Sequence[int] = DEFAULT_KS,
    progress: Progress | None = None,
    on_prediction: OnPrediction | None = None,
    batch_size: int = 1,
    exclude: str = "seen",
    history_max: int = HISTORY_MAX,
) -> dict[str, Any]:
    """Next-item prediction on test sessions after learning the training events.

    All training events are learned in time order. Then the test events stream in
    time order (sessions interleave; `user_id` is the session): each click is learned,
    and if it is not its session's last, `recommend(context, max K, exclude)` — the
    list the live worker would show right after that click — is scored against the
    session's next click, computed per session in advance. session-rec's next-item task
    counts repeat clicks: `exclude="none"` is that protocol as published.
    predictions == len(test_events) minus the number of test sessions. With
    `batch_size` > 1 the test clicks are learned in chunks of distinct sessions and
    each chunk's lists ranked after it."""
    train = time_ordered(train_events)
    test = time_ordered(test_events)
    following = next_clicks(test)

    metrics = RankingMetrics(ks)
    replay = _Replay(model, metrics, progress, exclude, history_max)
    started = time.perf_counter()
    for chunk in chunks(train, batch_size):
        replay.learn_many(chunk)
    position = 0
    for chunk in chunks(test, batch_size, distinct_users=batch_size > 1):
        targets = following[position : position + len(chunk)]
        position += len(chunk)
        contexts = replay.learn_many(chunk)
        asked = [c for c, target in enumerate(targets) if target is not None]
        excludes = [replay.excluded(chunk[c].user_id, contexts[c]) for c in asked]
        if batch_size == 1:
            lists = [
                model.recommend(contexts[c], metrics.max_k, leave_out)
                for c, leave_out in zip(asked, excludes, strict=True)
            ]
        else:
            lists = model.recommend_many([contexts[c] for c in asked], metrics.max_k, excludes)
        for c, ranked in zip(asked, lists, strict=True):
            target = targets[c]
            assert target is not None
            _score(metrics, on_prediction, chunk[c].user_id, _ids(ranked), target)
    return replay.finish(started, len(train) + len(test))


def next_clicks(events: Sequence[Interaction]) -> list[str | None]:
    """For each event, the item of the same user's (session's) next event in the given
    order, or None for the user's last event."""
    following: list[str | None] = [None] * len(events)
    previous: dict[str, int] = {}
    for position, event in enumerate(events):
        earlier = previous.get(event.user_id)
        if earlier is not None:
            following[earlier] = event.item_id
        previous[event.user_id] = position
    return following


class _Replay:
    """The per-user contexts and histories, the catalogue and the progress count of one
    run, and the exclusion policy its rankings follow."""

    def __init__(
        self,
        model: Recommender,
        metrics: RankingMetrics,
        progress: Progress | None,
        exclude: str = "none",
        history_max: int = HISTORY_MAX,
    ):
        excluded(exclude, UserContext())  # ValueError for an unknown policy, now
        self.model = model
        self.metrics = metrics
        self.progress = progress
        self.exclude = exclude
        self.history_max = history_max
        self.contexts: dict[str, UserContext] = {}
        self.histories: dict[str, tuple[str, ...]] = {}
        self._pending = 0

    def context(self, user_id: str) -> UserContext:
        context = self.contexts.get(user_id)
        return self.model.new_context() if context is None else context

    def excluded(self, user_id: str, context: UserContext) -> Collection[str]:
        """What a ranking for `user_id`, whose context is `context`, leaves out."""
        history = self.histories.get(user_id, ()) if self.exclude == "history" else ()
        return excluded(self.exclude, context, frozenset(history))

    def _remember(self, event: Interaction) -> None:
        if self.exclude == "history":
            history = self.histories.get(event.user_id, ())
            self.histories[event.user_id] = remembered(history, event.item_id, self.history_max)

    def learn(self, event: Interaction) -> UserContext:
        """Learn one event; returns the user's context after it."""
        context = self.model.learn_one(self.context(event.user_id), event).context
        self.contexts[event.user_id] = context
        self._remember(event)
        self.metrics.see(event.item_id)
        self.tick()
        return context

    def learn_many(self, events: Sequence[Interaction]) -> list[UserContext]:
        """Learn a chunk (through `learn_one` for a chunk of one, so batch size 1 is the
        one-event path exactly); returns each event's user context after it."""
        if len(events) == 1:
            return [self.learn(events[0])]
        before = {event.user_id: self.context(event.user_id) for event in events}
        contexts = [update.context for update in self.model.learn_many(before, events)]
        for event, context in zip(events, contexts, strict=True):
            self.contexts[event.user_id] = context
            self._remember(event)
            self.metrics.see(event.item_id)
            self.tick()
        return contexts

    def tick(self) -> None:
        self._pending += 1
        if self.progress is not None and self._pending >= _PROGRESS_EVERY:
            self.progress(self._pending)
            self._pending = 0

    def finish(self, started: float, events: int) -> dict[str, Any]:
        seconds = time.perf_counter() - started
        if self.progress is not None and self._pending:
            self.progress(self._pending)
        self._pending = 0
        result = self.metrics.summary()
        result["seconds"] = seconds
        result["events_per_s"] = events / seconds if seconds > 0 else 0.0
        return result


def _ids(scored: Iterable[Any]) -> list[str]:
    return [s.item_id for s in scored]


def _score(
    metrics: RankingMetrics,
    on_prediction: OnPrediction | None,
    user_id: str,
    ranked: list[str],
    target: str,
) -> None:
    metrics.add(ranked, target)
    if on_prediction is not None:
        on_prediction(user_id, ranked, target)


def cold_start(
    model: Recommender,
    events: Sequence[Interaction],
    contents: Mapping[str, ItemContent],
    ks: Sequence[int] = DEFAULT_KS,
    progress: Progress | None = None,
    on_prediction: OnPrediction | None = None,
    exclude: str = "seen",
    new_below: int = NEW_ITEM_CLICKS,
    history_max: int = HISTORY_MAX,
) -> dict[str, Any]:
    """Prequential (see `prequential`, one event at a time) with the catalogue known
    up front: a `ContentAware` model is given every item's content before the first
    click, as a shop knows its new products before they sell; other models ignore it.
    Besides prequential's figures, `new_item_HR@K` (K the largest cut-off): over the
    clicks on items that had fewer than `new_below` earlier clicks in the stream, the
    share whose item was in the top K shown to that user just before the click
    (`new_item_predictions` of them)."""
    if contents and isinstance(model, ContentAware):
        model.set_content(contents)
    metrics = RankingMetrics(ks)
    replay = _Replay(model, metrics, progress, exclude, history_max)
    clicks: dict[str, int] = {}
    new_hits = new_clicks = 0
    started = time.perf_counter()
    for event in time_ordered(events):
        context = replay.context(event.user_id)
        leave_out = replay.excluded(event.user_id, context)
        ranked = _ids(model.recommend(context, metrics.max_k, leave_out))
        _score(metrics, on_prediction, event.user_id, ranked, event.item_id)
        if clicks.get(event.item_id, 0) < new_below:
            new_clicks += 1
            new_hits += event.item_id in ranked
        clicks[event.item_id] = clicks.get(event.item_id, 0) + 1
        replay.learn(event)
    result = replay.finish(started, len(events))
    return {
        f"new_item_HR@{metrics.max_k}": new_hits / new_clicks if new_clicks else 0.0,
        "new_item_predictions": new_clicks,
        **result,
    }
