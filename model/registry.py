"""Build a recommender by name: the one place `stream/` and the tests get models from."""

from __future__ import annotations

from model.base import MODEL_NAMES, ItemIndex, Recommender
from model.baselines import DEFAULT_HALF_LIFE_S, CoVisitation, RecentPopularity
from model.transitions import DEFAULT_SESSION_GAP_S

__all__ = ["MODEL_NAMES", "build_recommender"]


def build_recommender(
    name: str,
    *,
    dim: int = 64,
    seed: int = 0,
    index: ItemIndex | None = None,
    half_life_s: float = DEFAULT_HALF_LIFE_S,
    session_gap_s: float = DEFAULT_SESSION_GAP_S,
) -> Recommender:
    """A fresh model with default hyperparameters. `dim`, `seed` and `index` matter only
    to the torch model: the baselines have no vectors and nothing random.
    `half_life_s` is every model's popularity half-life (the ranking itself for
    `popularity`, the fill and a feature for the others). `session_gap_s` is the
    longest pause between a user's clicks that still counts as one session, so as an
    item-to-item transition (`covisit` and `torch`; popularity has no transitions).
    ValueError for an unknown name, listing the choices.

    >>> build_recommender("covisit").version
    'covisit-w5'
    """
    if name == "torch":
        # Imported here: torch costs a second or more to import, and nothing else needs it.
        from model.torch_model import TorchRecommender

        return TorchRecommender(
            dim=dim, seed=seed, index=index, half_life_s=half_life_s, session_gap_s=session_gap_s
        )
    if name == "popularity":
        return RecentPopularity(half_life_s)
    if name == "covisit":
        return CoVisitation(half_life_s=half_life_s, session_gap_s=session_gap_s)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
