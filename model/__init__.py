"""Pure PyTorch models: user context, dynamic item representations, baselines."""

from model.base import (
    EVENT_TYPES,
    Interaction,
    ItemIndex,
    Recommender,
    Scored,
    Update,
    UserContext,
)
from model.baselines import CoVisitation, RecentPopularity
from model.index import ExactIndex
from model.registry import MODEL_NAMES, build_recommender
from model.torch_model import TorchRecommender

__all__ = [
    "EVENT_TYPES",
    "MODEL_NAMES",
    "CoVisitation",
    "ExactIndex",
    "Interaction",
    "ItemIndex",
    "Recommender",
    "RecentPopularity",
    "Scored",
    "TorchRecommender",
    "Update",
    "UserContext",
    "build_recommender",
]
