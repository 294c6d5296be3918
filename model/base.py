"""The model layer's public types: what a recommender learns from and what it returns.

Everything here is plain Python, NumPy and PyTorch. Nothing in `model/` imports Kafka,
Redis, Faust or `serving/`; the worker in `stream/` composes them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: The event types a click may carry; `stream.events` validates against this tuple.
EVENT_TYPES = ("click", "view", "add_to_cart", "purchase")
#: The recommenders `model.registry.build_recommender` builds; `stream.settings` and the
#: CLI offer these.
MODEL_NAMES = ("torch", "popularity", "covisit")
#: What a ranking leaves out (`excluded`); the worker's STREAMREC_EXCLUDE and
#: `streamrec evaluate --exclude` offer these.
EXCLUSION_POLICIES = ("seen", "last", "none", "history")
#: How many distinct items the `history` policy remembers per user by default.
HISTORY_MAX = 1000


@dataclass(frozen=True, slots=True)
class Interaction:
    """One user-item event, already validated by the caller."""

    user_id: str
    item_id: str
    timestamp: float
    event_type: str = "click"
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class UserContext:
    """A user's state between events; immutable so learning can never mutate its input.

    `recent` holds the user's most recent item ids, oldest first, bounded by the model.
    `state` is the model's own hidden state as plain floats (empty for baselines), so a
    context round-trips through JSON (`to_dict`/`from_dict`) into a Faust table.
    """

    recent: tuple[str, ...] = ()
    state: tuple[float, ...] = ()
    clicks: int = 0
    last_timestamp: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "recent": list(self.recent),
            "state": list(self.state),
            "clicks": self.clicks,
            "last_timestamp": self.last_timestamp,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UserContext:
        return cls(
            recent=tuple(data.get("recent", ())),
            state=tuple(float(x) for x in data.get("state", ())),
            clicks=int(data.get("clicks", 0)),
            last_timestamp=float(data.get("last_timestamp", 0.0)),
        )


def excluded(policy: str, context: UserContext, history: Collection[str] = ()) -> Collection[str]:
    """What a ranking for a user leaves out under `policy`, `context` being the user's
    after their last click: `seen` the model's recent items, `last` the last item,
    `history` the `history` given (see `remembered`), `none` nothing. The worker and
    the offline protocols both rank through this, so evaluate scores what users get."""
    if policy == "seen":
        return set(context.recent)
    if policy == "last":
        return set(context.recent[-1:])
    if policy == "history":
        return history
    if policy == "none":
        return ()
    raise ValueError(f"exclusion policy must be one of {', '.join(EXCLUSION_POLICIES)}")


def remembered(history: tuple[str, ...], item_id: str, limit: int) -> tuple[str, ...]:
    """A user's history (distinct ids, oldest first) after a click on `item_id`: the
    item moved to the end, and only the last `limit` ids kept."""
    if history and history[-1] == item_id:
        return history
    if item_id in history:
        history = tuple(i for i in history if i != item_id)
    return (*history, item_id)[-limit:]


def waves(interactions: Sequence[Interaction]) -> list[list[int]]:
    """Positions of `interactions` by wave: wave w lists, in order, the position of
    every user's w-th interaction.

    >>> waves([Interaction(u, "i", 0.0) for u in "abab"])
    [[0, 1], [2, 3]]
    """
    cut: list[list[int]] = []
    seen: dict[str, int] = {}
    for position, interaction in enumerate(interactions):
        wave = seen.get(interaction.user_id, 0)
        seen[interaction.user_id] = wave + 1
        if wave == len(cut):
            cut.append([])
        cut[wave].append(position)
    return cut


@dataclass(frozen=True, slots=True)
class Scored:
    item_id: str
    score: float


@dataclass(frozen=True, slots=True)
class ItemChange:
    """One item vector a `learn_one` call changed: float32 copies of the vector before
    (None: the event created the item) and after."""

    before: np.ndarray | None
    after: np.ndarray


@dataclass(frozen=True, slots=True)
class Update:
    """What one `learn_one` call produced.

    `item_changes` maps each item whose representation changed to its `ItemChange`, so
    the caller can forward exactly those (the item's owner applies the difference); a
    model with an index has already upserted every `after` into it. `user_vector` is the
    user's query vector after the event, or None for models without one. `loss` is the
    training loss of the step the event caused, for models that have one (else None).
    """

    context: UserContext
    item_changes: Mapping[str, ItemChange] = field(default_factory=dict)
    user_vector: np.ndarray | None = None
    loss: float | None = None

    @property
    def item_vectors(self) -> dict[str, np.ndarray]:
        """Each changed item's vector after the event (`item_changes`' `after`)."""
        return {item_id: change.after for item_id, change in self.item_changes.items()}


@runtime_checkable
class ItemIndex(Protocol):
    """Top-K search over item vectors by inner product.

    The torch model retrieves through this port: in evaluation it uses the exact
    in-process `model.index.ExactIndex`; the worker passes a FAISS index from
    `serving/`, which satisfies the same protocol without either importing the other.
    """

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or replace vectors (float32, shape (len(ids), dim)). Idempotent."""
        ...

    def search(self, query: np.ndarray, k: int, exclude: Collection[str] = ()) -> list[Scored]:
        """Best-first top-k for one query vector; never returns an excluded id, and
        returns min(k, len(index) - excluded present) results."""
        ...

    def __len__(self) -> int: ...


def search_each(
    index: ItemIndex, queries: np.ndarray, k: int, excludes: Sequence[Collection[str]]
) -> list[list[Scored]]:
    """`search` for each row of `queries` (shape (n, dim)), with `excludes[i]` for row
    i: through the index's own `search_many` when it has one (an optional method of the
    port: one call for the batch), else a loop of `search`. ValueError if the counts
    differ."""
    queries = np.asarray(queries, dtype=np.float32)
    if len(queries) != len(excludes):
        raise ValueError(f"{len(queries)} queries but {len(excludes)} exclude sets")
    search_many = getattr(index, "search_many", None)
    if search_many is not None:
        results: list[list[Scored]] = search_many(queries, k, excludes)
        return results
    return [index.search(q, k, ex) for q, ex in zip(queries, excludes, strict=True)]


def search_ids_each(index: ItemIndex, queries: np.ndarray, k: int) -> list[list[str]]:
    """The ids of `search_each(index, queries, k, no exclusions)`, in its order: through
    the index's own `search_ids_many(queries, k)` when it has one (optional: it saves
    making a `Scored` per hit)."""
    queries = np.asarray(queries, dtype=np.float32)
    search_ids_many = getattr(index, "search_ids_many", None)
    if search_ids_many is not None:
        results: list[list[str]] = search_ids_many(queries, k)
        return results
    found = search_each(index, queries, k, [()] * len(queries))
    return [[s.item_id for s in answer] for answer in found]


@runtime_checkable
class ItemVectorModel(Protocol):
    """A recommender whose items have vectors that can be read and set from outside:
    the worker copies the item owner's canonical vectors into it (multi-worker)."""

    def item_vector(self, item_id: str) -> np.ndarray:
        """A float32 copy of one item's vector; KeyError for an unknown id."""
        ...

    def set_item_vectors(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Overwrite or add item vectors; does not touch any index."""
        ...


@runtime_checkable
class Recommender(Protocol):
    """One interface for the torch model and every baseline.

    Contract (checked for every implementation by tests/unit/test_model_contract.py):
    - `learn_one` never mutates its arguments and returns the user's next context;
    - the same seed and the same events give the same recommendations;
    - `state_dict()` / `load_state_dict()` round-trip exactly;
    - `learn_many` / `recommend_many` give what the one-event methods give one event
      at a time: exactly for the baselines, within the tolerance a model states for
      itself (the torch model batches its training step, see its docstring).
    """

    name: str
    #: Reported as `model_version` in recommendation events: derived from the
    #: hyperparameters by default, set to the checkpoint's by `load_checkpoint`.
    version: str

    def new_context(self) -> UserContext: ...

    def learn_one(self, context: UserContext, interaction: Interaction) -> Update:
        """Update the user's context and the clicked item's representation."""
        ...

    def learn_many(
        self, contexts: Mapping[str, UserContext], interactions: Sequence[Interaction]
    ) -> list[Update]:
        """Learn `interactions` in order. `contexts` maps every user id in the batch to
        its context before the batch; a user's later click uses the context the earlier
        one produced. One `Update` per interaction, in order. KeyError if a user of the
        batch has no context; never mutates its arguments."""
        ...

    def recommend(
        self, context: UserContext, k: int, exclude: Collection[str] = ()
    ) -> list[Scored]:
        """Best-first top-k for the user; excluded ids never appear."""
        ...

    def recommend_many(
        self, contexts: Sequence[UserContext], k: int, excludes: Sequence[Collection[str]]
    ) -> list[list[Scored]]:
        """`recommend(contexts[i], k, excludes[i])` for each i, in order; ValueError if
        the two sequences differ in length."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class OnlineRecommender(ABC):
    """What every recommender here shares (river's `Ranker` idea): the `Recommender`
    protocol's plumbing, so a model writes only its learning and ranking.

    `version` is a plain attribute for callers: it reads as `default_version()` (named
    after the hyperparameters, so it follows a `load_state_dict` that changes them)
    until something assigns it, as `load_checkpoint` does with the checkpoint's.
    """

    name: str
    max_recent: int
    _version: str | None = None

    @property
    def version(self) -> str:
        return self.default_version() if self._version is None else self._version

    @version.setter
    def version(self, value: str) -> None:
        self._version = value

    @abstractmethod
    def default_version(self) -> str:
        """The version named after this model's hyperparameters."""

    def new_context(self) -> UserContext:
        return UserContext()

    def advance(
        self, context: UserContext, interaction: Interaction, state: tuple[float, ...] = ()
    ) -> UserContext:
        """The context after `interaction`: the item appended to `recent` (keeping the
        last `max_recent`), one more click, and `state` as the model's new hidden state."""
        return UserContext(
            recent=(*context.recent, interaction.item_id)[-self.max_recent :],
            state=state,
            clicks=context.clicks + 1,
            # Out-of-order events must not move the clock back, or a late event would
            # look like the start of a new session to the next one.
            last_timestamp=max(context.last_timestamp, interaction.timestamp),
        )

    @abstractmethod
    def learn_one(self, context: UserContext, interaction: Interaction) -> Update:
        """Update the user's context and the clicked item's representation; never
        mutates its arguments."""

    @abstractmethod
    def recommend(
        self, context: UserContext, k: int, exclude: Collection[str] = ()
    ) -> list[Scored]:
        """Best-first top-k for the user; excluded ids never appear."""

    def learn_many(
        self, contexts: Mapping[str, UserContext], interactions: Sequence[Interaction]
    ) -> list[Update]:
        """`learn_one` on each interaction in order, threading each user's context
        through the batch: exactly the one-event results. Models that can do better
        (one batched step) override it. KeyError if a user has no entry in `contexts`."""
        current = dict(contexts)
        updates: list[Update] = []
        for interaction in interactions:
            update = self.learn_one(current[interaction.user_id], interaction)
            current[interaction.user_id] = update.context
            updates.append(update)
        return updates

    def recommend_many(
        self, contexts: Sequence[UserContext], k: int, excludes: Sequence[Collection[str]]
    ) -> list[list[Scored]]:
        """`recommend` on each context in order; ValueError if `excludes` has another
        length."""
        if len(contexts) != len(excludes):
            raise ValueError(f"{len(contexts)} contexts but {len(excludes)} exclude sets")
        return [
            self.recommend(context, k, exclude)
            for context, exclude in zip(contexts, excludes, strict=True)
        ]

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything learned, as tensors, numbers, strings, lists and dicts."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the learned state with `state`'s; ValueError if it does not fit."""
