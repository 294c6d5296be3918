"""The model layer's public types: what a recommender learns from and what it returns.

Everything here is plain Python, NumPy and PyTorch. Nothing in `model/` imports Kafka,
Redis, Faust or `serving/`; the worker in `stream/` composes them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

EVENT_TYPES = ("click", "view", "add_to_cart", "purchase")


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


@dataclass(frozen=True, slots=True)
class Scored:
    item_id: str
    score: float


@dataclass(frozen=True, slots=True)
class Update:
    """What one `learn_one` call produced.

    `item_vectors` maps each item whose representation changed to its new float32
    vector, so the caller can push exactly those to Redis. `user_vector` is the user's
    query vector after the event, or None for models without one. `loss` is the training
    loss of the step the event caused, for models that have one (None otherwise).
    """

    context: UserContext
    item_vectors: Mapping[str, np.ndarray] = field(default_factory=dict)
    user_vector: np.ndarray | None = None
    loss: float | None = None


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

    def search(
        self, query: np.ndarray, k: int, exclude: Collection[str] = ()
    ) -> list[Scored]:
        """Best-first top-k for one query vector; never returns an excluded id, and
        returns min(k, len(index) - excluded present) results."""
        ...

    def __len__(self) -> int: ...


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
    - `state_dict()` / `load_state_dict()` round-trip exactly.
    """

    name: str

    @property
    def version(self) -> str:
        """Model version reported as `model_version` in recommendation events."""
        ...

    def new_context(self) -> UserContext: ...

    def learn_one(self, context: UserContext, interaction: Interaction) -> Update:
        """Update the user's context and the clicked item's representation."""
        ...

    def recommend(
        self, context: UserContext, k: int, exclude: Collection[str] = ()
    ) -> list[Scored]:
        """Best-first top-k for the user; excluded ids never appear."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...
