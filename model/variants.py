"""Variants by user: several recommenders learn from every click; each user is served by one.

A user's arm follows from a salted hash of the user id alone (`arm_index`): the same on
every worker, across restarts and Python processes, and independent of the other users.
Every arm learns from every click, so no arm is starved of data and a switch of arms
would find a trained model; only the served list differs between users.

A user's context carries each arm's own state, packed into `UserContext.state` as

    (arms, served arm, n_0, *state_0, n_1, *state_1, ...)

so the worker's user table, records and recovery are unchanged. A state that does not
fit this layout (written before the experiment, or by another number of arms) starts
every arm from an empty state of its own; `recent`, `clicks` and the last timestamp are
kept, being the same for every arm. Each arm's context is the shared fields plus its
own state; after a click the shared fields come from the primary arm's update.

The primary arm is the first one with item vectors (`ItemVectorModel`), else the first:
its item changes, user vector and loss are the `Update`'s, so only its vectors reach
the index the worker shares, Redis and the other workers. Another arm's learned state
stays in the process, as a baseline's counts always do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import numpy as np

from model.base import (
    MODEL_NAMES,
    Interaction,
    ItemVectorModel,
    Recommender,
    Scored,
    Update,
    UserContext,
)

_HASH_SPACE = 1 << 64


@dataclass(frozen=True, slots=True)
class Arm:
    """One variant: its name (the `variant` label and event field), its model and its
    share of users (a positive integer weight)."""

    name: str
    model: Recommender
    weight: int


def arm_index(user_id: str, salt: str, weights: Sequence[int]) -> int:
    """The arm of `user_id`: the user's point in [0, sum(weights)) from BLAKE2b over the
    salt and the id, and the arm whose cumulative weight first exceeds it. Changing the
    salt reshuffles every user; adding weight to the last arm moves users only into it."""
    digest = hashlib.blake2b(
        user_id.encode("utf-8", "surrogatepass"), digest_size=8, key=salt.encode()[:64]
    ).digest()
    point = int.from_bytes(digest, "big") * sum(weights) // _HASH_SPACE
    for index, weight in enumerate(weights):
        point -= weight
        if point < 0:
            return index
    raise ValueError("weights must be positive")  # pragma: no cover - sum checked above


class Variants:
    """A `Recommender` over `arms`, each user served by `arm_index(user, salt)`'s arm.

    `version` names every arm's version; `served(context)` is the arm that ranks for a
    context (the one its last click was assigned to). A context that never went
    through `learn_many` (a user the worker has not seen) ranks with the first arm
    until `enter` stamps the user's arm on it. ValueError for no arms, a non-positive
    weight or two arms of one name.
    """

    name = "variants"

    def __init__(self, arms: Sequence[Arm], salt: str) -> None:
        if not arms:
            raise ValueError("variants need at least one arm")
        names = [arm.name for arm in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"two variants share a name: {', '.join(names)}")
        if any(arm.weight <= 0 for arm in arms):
            raise ValueError("every variant's weight must be a positive integer")
        self.arms = tuple(arms)
        self.salt = salt
        self.weights = [arm.weight for arm in arms]
        vector_arms = [i for i, arm in enumerate(arms) if isinstance(arm.model, ItemVectorModel)]
        self.primary = vector_arms[0] if vector_arms else 0
        self._version: str | None = None

    @property
    def version(self) -> str:
        if self._version is not None:
            return self._version
        return ",".join(f"{arm.name}={arm.model.version}" for arm in self.arms)

    @version.setter
    def version(self, value: str) -> None:
        self._version = value

    # Who is served by which arm.

    def arm_of(self, user_id: str) -> int:
        return arm_index(user_id, self.salt, self.weights)

    def served(self, context: UserContext) -> Arm:
        """The arm that ranks for `context`."""
        return self.arms[self._unpack(context)[0]]

    def enter(self, user_id: str, context: UserContext) -> UserContext:
        """`context` with `user_id`'s arm as the serving one (the arms' states kept)."""
        _, states = self._unpack(context)
        return self._pack(context, self.arm_of(user_id), states)

    # The layout of the packed state.

    def _unpack(self, context: UserContext) -> tuple[int, list[tuple[float, ...]]]:
        """(served arm, each arm's state); empty states when the layout does not fit."""
        state, arms = context.state, len(self.arms)
        fresh: tuple[int, list[tuple[float, ...]]] = (0, [()] * arms)
        if len(state) < 2 + arms or state[0] != arms:
            return fresh
        served = int(state[1])
        if not 0 <= served < arms or state[1] != served:
            return fresh
        states: list[tuple[float, ...]] = []
        at = 2
        for _ in range(arms):
            if at >= len(state) or state[at] != int(state[at]) or state[at] < 0:
                return fresh
            size = int(state[at])
            states.append(tuple(state[at + 1 : at + 1 + size]))
            at += 1 + size
        if at != len(state):
            return fresh
        return served, states

    def _pack(
        self, shared: UserContext, served: int, states: Sequence[Sequence[float]]
    ) -> UserContext:
        packed: list[float] = [float(len(self.arms)), float(served)]
        for state in states:
            packed.append(float(len(state)))
            packed.extend(state)
        return UserContext(shared.recent, tuple(packed), shared.clicks, shared.last_timestamp)

    @staticmethod
    def _part(context: UserContext, state: tuple[float, ...]) -> UserContext:
        return UserContext(context.recent, state, context.clicks, context.last_timestamp)

    # The Recommender protocol.

    def new_context(self) -> UserContext:
        return UserContext()

    def learn_one(self, context: UserContext, interaction: Interaction) -> Update:
        return self.learn_many({interaction.user_id: context}, [interaction])[0]

    def learn_many(
        self, contexts: Mapping[str, UserContext], interactions: Sequence[Interaction]
    ) -> list[Update]:
        """Every arm's `learn_many` over the whole batch; the updates carry the primary
        arm's item changes, user vector and loss."""
        unpacked = {user: self._unpack(context)[1] for user, context in contexts.items()}
        by_arm = [
            arm.model.learn_many(
                {user: self._part(contexts[user], states[a]) for user, states in unpacked.items()},
                interactions,
            )
            for a, arm in enumerate(self.arms)
        ]
        served = {user: self.arm_of(user) for user in contexts}
        updates: list[Update] = []
        for i, interaction in enumerate(interactions):
            main = by_arm[self.primary][i]
            states = [arm_updates[i].context.state for arm_updates in by_arm]
            updates.append(
                Update(
                    context=self._pack(main.context, served[interaction.user_id], states),
                    item_changes=main.item_changes,
                    user_vector=main.user_vector,
                    loss=main.loss,
                )
            )
        return updates

    def recommend(
        self, context: UserContext, k: int, exclude: Collection[str] = ()
    ) -> list[Scored]:
        return self.recommend_many([context], k, [exclude])[0]

    def recommend_many(
        self, contexts: Sequence[UserContext], k: int, excludes: Sequence[Collection[str]]
    ) -> list[list[Scored]]:
        """Each context ranked by its served arm, one `recommend_many` call per arm."""
        if len(contexts) != len(excludes):
            raise ValueError(f"{len(contexts)} contexts but {len(excludes)} exclude sets")
        results: list[list[Scored]] = [[] for _ in contexts]
        groups: dict[int, list[tuple[int, UserContext]]] = {}
        for i, context in enumerate(contexts):
            served, states = self._unpack(context)
            groups.setdefault(served, []).append((i, self._part(context, states[served])))
        for served, members in groups.items():
            ranked = self.arms[served].model.recommend_many(
                [part for _, part in members], k, [excludes[i] for i, _ in members]
            )
            for (i, _), items in zip(members, ranked, strict=True):
                results[i] = items
        return results

    def state_dict(self) -> dict[str, Any]:
        return {arm.name: arm.model.state_dict() for arm in self.arms}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Each arm's state from `state[arm name]`; KeyError naming a missing arm."""
        missing = [arm.name for arm in self.arms if arm.name not in state]
        if missing:
            raise KeyError(f"no state for variant(s) {', '.join(missing)}")
        for arm in self.arms:
            arm.model.load_state_dict(state[arm.name])


class VectorVariants(Variants):
    """`Variants` whose primary arm has item vectors: reading and setting them goes to
    it (`ItemVectorModel`), so the worker shares that arm's vectors."""

    def item_vector(self, item_id: str) -> np.ndarray:
        model = self.arms[self.primary].model
        assert isinstance(model, ItemVectorModel)
        return model.item_vector(item_id)

    def set_item_vectors(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        model = self.arms[self.primary].model
        assert isinstance(model, ItemVectorModel)
        model.set_item_vectors(ids, vectors)


def variants(arms: Sequence[Arm], salt: str) -> Variants:
    """The experiment over `arms`: a `VectorVariants` when an arm has item vectors."""
    if any(isinstance(arm.model, ItemVectorModel) for arm in arms):
        return VectorVariants(arms, salt)
    return Variants(arms, salt)


def variant_name(what: str) -> str:
    """A variant's name: the model's, or a checkpoint file's name without its extension."""
    return what if what in MODEL_NAMES else PurePath(what).stem


def parse_variants(spec: str) -> list[tuple[str, int]]:
    """`"torch:90,covisit:10"` as [("torch", 90), ("covisit", 10)]: each part a model
    name or a checkpoint path, a colon, and a positive integer weight (the last colon
    splits, so a path may hold colons). ValueError naming the part that is wrong."""
    parsed: list[tuple[str, int]] = []
    for part in spec.split(","):
        what, colon, weight = part.strip().rpartition(":")
        if not colon or not what or not weight.isdigit() or int(weight) <= 0:
            raise ValueError(
                f"variant {part.strip()!r} is not MODEL_OR_CHECKPOINT:WEIGHT with a positive "
                "integer weight (e.g. torch:90,covisit:10)"
            )
        parsed.append((what, int(weight)))
    return parsed


__all__ = [
    "Arm",
    "Variants",
    "VectorVariants",
    "arm_index",
    "parse_variants",
    "variant_name",
    "variants",
]
