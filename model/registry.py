"""Build a recommender by name: the one place `stream/` and the tests get models from."""

from __future__ import annotations

from model.base import ItemIndex, Recommender
from model.baselines import CoVisitation, RecentPopularity
from model.torch_model import TorchRecommender

MODEL_NAMES = ("torch", "popularity", "covisit")


def build_recommender(
    name: str, *, dim: int = 64, seed: int = 0, index: ItemIndex | None = None
) -> Recommender:
    """A fresh model with default hyperparameters. `dim`, `seed` and `index` matter only
    to the torch model: the baselines have no vectors and nothing random.
    ValueError for an unknown name, listing the choices.

    >>> build_recommender("covisit").version
    'covisit-w5'
    """
    if name == "torch":
        return TorchRecommender(dim=dim, seed=seed, index=index)
    if name == "popularity":
        return RecentPopularity()
    if name == "covisit":
        return CoVisitation()
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
