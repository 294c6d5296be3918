"""Pure PyTorch models: user context, dynamic item representations, baselines.

Importing this package is cheap: the names that need torch (`TorchRecommender`,
`ExactIndex`) are imported on first use, so `model.base` serves callers that never train.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from model.base import (
    EVENT_TYPES,
    MODEL_NAMES,
    Interaction,
    ItemChange,
    ItemIndex,
    OnlineRecommender,
    Recommender,
    Scored,
    Update,
    UserContext,
)
from model.baselines import CoVisitation, RecentPopularity
from model.registry import build_recommender

if TYPE_CHECKING:
    from model.index import ExactIndex
    from model.torch_model import TorchRecommender

_LAZY = {"ExactIndex": "model.index", "TorchRecommender": "model.torch_model"}

__all__ = [
    "EVENT_TYPES",
    "MODEL_NAMES",
    "CoVisitation",
    "ExactIndex",
    "Interaction",
    "ItemChange",
    "ItemIndex",
    "OnlineRecommender",
    "Recommender",
    "RecentPopularity",
    "Scored",
    "TorchRecommender",
    "Update",
    "UserContext",
    "build_recommender",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
