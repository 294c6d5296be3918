"""Content vectors: an item's content (`model.content.ItemContent`) mapped into the
item-embedding space by a linear map learned online from the items that have both
content and clicks.

`ContentEncoder` is the port a model reaches it through; `HashedContentEncoder` is the
default, which needs no download and no network: hashed words, word pairs and
character trigrams of the title and text, the categories, and the optional upstream
embedding. NumPy (torch only for the state's tensors).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from model.content import ItemContent

#: Hashed feature buckets: large enough that distinct words of a catalogue rarely
#: share one; memory follows the buckets learning touched, not this number.
DEFAULT_BUCKETS = 1 << 20
# Each group's features are scaled to this length before the whole vector is scaled to
# length 1: categories say the most about what an item is, character trigrams the least
# (they mostly tell spellings apart).
_GROUP_WEIGHTS = {"bias": 0.5, "category": 1.0, "word": 0.7, "trigram": 0.35, "embedding": 1.0}
_WORD = re.compile(r"\w+")


@runtime_checkable
class ContentEncoder(Protocol):
    """Maps item content to vectors of `dim` floats and learns the mapping online."""

    dim: int

    @property
    def contents(self) -> Mapping[str, ItemContent]:
        """Every item whose content is known, with it."""
        ...

    def set_content(self, contents: Mapping[str, ItemContent]) -> None:
        """Remember each item's content, replacing what was known of it."""
        ...

    def __contains__(self, item_id: object) -> bool:
        """Whether the item's content is known."""
        ...

    def vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """The current content vector of each id (float32, shape (len, dim)); KeyError
        for an id whose content is unknown."""
        ...

    def learn(self, item_ids: Sequence[str], targets: np.ndarray) -> None:
        """Move the mapping towards `targets[i]` for item i (items without content are
        skipped): what the items' clicks taught their embeddings."""
        ...

    def similarity(self, profile: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """How alike in content each of `item_ids` is to the items of `profile` (float32,
        0.0 where either side has no content); needs no learning."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class Features:
    """One item's features: distinct hashed `buckets` with their `weights`, and the
    upstream embedding scaled as its group (None without one); lengths sum to 1."""

    buckets: np.ndarray
    weights: np.ndarray
    dense: np.ndarray | None


def stable_bucket(token: str, buckets: int) -> int:
    """The bucket of `token`: the same in every process and on every machine (blake2b,
    not Python's salted `hash()`).

    >>> stable_bucket("c:comedy", 1 << 20)
    756703
    """
    digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


def tokens(content: ItemContent) -> dict[str, list[str]]:
    """The feature tokens of each group, before hashing.

    >>> tokens(ItemContent(title="Toy Story (1995)", categories=("Comedy",)))["word"]
    ['w:toy', 'w:story', 'w:1995', 'b:toy story', 'b:story 1995']
    """
    words = _WORD.findall(f"{content.title} {content.text}".lower())
    return {
        "bias": ["bias"],
        "category": [f"c:{c.strip().lower()}" for c in content.categories if c.strip()],
        "word": [f"w:{w}" for w in words]
        + [f"b:{a} {b}" for a, b in zip(words, words[1:], strict=False)],
        "trigram": [
            f"t:{w[i : i + 3]}" for w in (f"#{w}#" for w in words) for i in range(len(w) - 2)
        ],
    }


class HashedContentEncoder:
    """Content vector c(x) = sum_f x_f W[f] + D^T e: x the item's hashed sparse
    features, e its upstream embedding (if any) scaled as a group, both together of
    length 1 (`Features`), W one row of `dim` floats per bucket and D a dense
    projection (made on the first embedding seen; every embedding must then have its
    dimension, else ValueError).

    Learning rule (normalised least mean squares): `learn(item, v)` takes the error
    r = v - c(x) and steps W[f] += lr * x_f * r for the item's buckets and
    D += lr * e r^T. As |x|^2 + |e|^2 = 1, that moves c(x) exactly a fraction `lr` of
    the way to v, and every item sharing features moves with it: a category's row
    becomes a running average of its clicked items' embeddings, so an unseen item
    lands among clicked items like it. W starts at zero (unseen buckets read as zero
    and take memory only once learned), so content vectors start at zero. Deterministic;
    not thread-safe.

    >>> encoder = HashedContentEncoder(dim=2)
    >>> same = ItemContent(categories=("x",))
    >>> encoder.set_content({"a": same, "b": same})
    >>> for _ in range(100):
    ...     encoder.learn(["a"], np.array([[1.0, 0.0]], dtype=np.float32))
    >>> np.round(encoder.vectors(["b"]), 2).tolist()
    [[1.0, 0.0]]
    """

    def __init__(self, dim: int, lr: float = 0.1, buckets: int = DEFAULT_BUCKETS) -> None:
        if dim < 1 or not 0 < lr <= 1 or buckets < 1:
            raise ValueError("dim must be >= 1, 0 < lr <= 1 and buckets >= 1")
        self.dim = dim
        self.lr = lr
        self.buckets = buckets
        self.contents: dict[str, ItemContent] = {}
        self._features: dict[str, Features] = {}
        self._slots: dict[int, int] = {}  # bucket -> row of _table
        self._table = np.zeros((1024, dim), dtype=np.float32)
        self._dense: np.ndarray | None = None
        self._bias = stable_bucket("bias", buckets)  # left out of `similarity`

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._features

    def __len__(self) -> int:
        return len(self._features)

    def set_content(self, contents: Mapping[str, ItemContent]) -> None:
        features = {item_id: self._featurise(c) for item_id, c in contents.items()}
        self.contents.update(contents)
        self._features.update(features)

    def vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        for i, item_id in enumerate(item_ids):
            out[i] = self._vector(self._features[item_id])
        return out

    def learn(self, item_ids: Sequence[str], targets: np.ndarray) -> None:
        targets = np.asarray(targets, dtype=np.float32).reshape(len(item_ids), self.dim)
        for item_id, target in zip(item_ids, targets, strict=True):
            features = self._features.get(item_id)
            if features is None:
                continue
            step = self.lr * (target - self._vector(features))
            rows = np.array([self._slot(int(b)) for b in features.buckets], dtype=np.int64)
            self._table[rows] += features.weights[:, None] * step
            if features.dense is not None and self._dense is not None:
                self._dense += np.outer(features.dense, step)

    def similarity(self, profile: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """The dot product of each item's sparse features (the bias left out) with the
        normalised sum of the profile items'."""
        out = np.zeros(len(item_ids), dtype=np.float32)
        known = [self._features[i] for i in profile if i in self._features]
        if not known:
            return out
        keys, sums = _summed_sparse(known, self._bias)
        norm = float(np.sqrt((sums * sums).sum()))
        if norm == 0.0:
            return out
        sums /= norm
        at = [(i, f) for i, item_id in enumerate(item_ids) if (f := self._features.get(item_id))]
        if not at:
            return out
        buckets = np.concatenate([f.buckets for _, f in at])
        weights = np.concatenate([f.weights for _, f in at])
        owner = np.repeat([i for i, _ in at], [len(f.buckets) for _, f in at])
        where = np.minimum(np.searchsorted(keys, buckets), len(keys) - 1)
        hit = keys[where] == buckets
        products = np.where(hit, weights * sums[where], 0.0)
        out[:] = np.bincount(owner, products, minlength=len(item_ids))
        return out

    def _vector(self, features: Features) -> np.ndarray:
        vector = np.zeros(self.dim, dtype=np.float32)
        slots = self._slots
        rows = [slots.get(int(b), -1) for b in features.buckets]
        known = np.array(rows, dtype=np.int64) >= 0
        if known.any():
            picked = np.array(rows, dtype=np.int64)[known]
            vector += features.weights[known] @ self._table[picked]
        if features.dense is not None and self._dense is not None:
            vector += features.dense @ self._dense
        return vector

    def _slot(self, bucket: int) -> int:
        slot = self._slots.get(bucket)
        if slot is None:
            slot = self._slots[bucket] = len(self._slots)
            if slot == len(self._table):
                self._table = np.concatenate([self._table, np.zeros_like(self._table)])
        return slot

    def _featurise(self, content: ItemContent) -> Features:
        """The item's `Features`; ValueError for an embedding of another dimension than
        the first one seen."""
        weights: dict[int, float] = {}
        groups = tokens(content)
        dense = None
        if content.embedding:
            dense = np.asarray(content.embedding, dtype=np.float32)
            if self._dense is None:
                self._dense = np.zeros((len(dense), self.dim), dtype=np.float32)
            if len(dense) != len(self._dense):
                raise ValueError(
                    f"content embedding of dimension {len(dense)}, expected {len(self._dense)}"
                )
        for group, items in groups.items():
            if not items:
                continue
            counts: dict[int, float] = {}
            for token in items:
                bucket = stable_bucket(token, self.buckets)
                counts[bucket] = counts.get(bucket, 0.0) + 1.0
            length = float(np.sqrt(sum(c * c for c in counts.values())))
            for bucket, count in counts.items():
                weights[bucket] = weights.get(bucket, 0.0) + _GROUP_WEIGHTS[group] * count / length
        squared = sum(w * w for w in weights.values())
        if dense is not None:
            length = float(np.linalg.norm(dense))
            dense = dense * (_GROUP_WEIGHTS["embedding"] / length) if length > 0 else None
            squared += float(dense @ dense) if dense is not None else 0.0
        scale = 1.0 / float(np.sqrt(squared))
        order = sorted(weights)
        return Features(
            np.array(order, dtype=np.int64),
            np.array([weights[b] * scale for b in order], dtype=np.float32),
            None if dense is None else (dense * scale).astype(np.float32),
        )

    def state_dict(self) -> dict[str, Any]:
        """The contents and the learned map (copies of the rows learning touched)."""
        ids = list(self.contents)
        return {
            "dim": self.dim,
            "lr": self.lr,
            "buckets": self.buckets,
            "ids": ids,
            "titles": [self.contents[i].title for i in ids],
            "texts": [self.contents[i].text for i in ids],
            "categories": [list(self.contents[i].categories) for i in ids],
            "embeddings": [
                None if (e := self.contents[i].embedding) is None else list(e) for i in ids
            ],
            "slots": list(self._slots),
            "table": torch.from_numpy(self._table[: len(self._slots)].copy()),
            "dense": None if self._dense is None else torch.from_numpy(self._dense.copy()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace contents and map with `state`'s; ValueError if `dim` differs."""
        if int(state["dim"]) != self.dim:
            raise ValueError(f"content state has dim {state['dim']}, this model {self.dim}")
        self.lr, self.buckets = float(state["lr"]), int(state["buckets"])
        self._bias = stable_bucket("bias", self.buckets)
        self.contents, self._features, self._dense = {}, {}, None
        self.set_content(
            {
                str(item_id): ItemContent(
                    title=str(title),
                    text=str(text),
                    categories=tuple(str(c) for c in categories),
                    embedding=None if embedding is None else tuple(float(x) for x in embedding),
                )
                for item_id, title, text, categories, embedding in zip(
                    state["ids"],
                    state["titles"],
                    state["texts"],
                    state["categories"],
                    state["embeddings"],
                    strict=True,
                )
            }
        )
        slots = [int(b) for b in state["slots"]]
        table = (
            torch.as_tensor(state["table"], dtype=torch.float32)
            .numpy()
            .reshape(len(slots), self.dim)
        )
        self._slots = {bucket: row for row, bucket in enumerate(slots)}
        self._table = np.zeros((max(1024, len(slots)), self.dim), dtype=np.float32)
        self._table[: len(slots)] = table
        if state["dense"] is not None:
            self._dense = torch.as_tensor(state["dense"], dtype=torch.float32).numpy().copy()


def _summed_sparse(features: Sequence[Features], bias: int) -> tuple[np.ndarray, np.ndarray]:
    """The sum of several items' sparse features with the `bias` bucket left out:
    distinct buckets ascending and their summed weights."""
    buckets = np.concatenate([f.buckets for f in features])
    weights = np.concatenate([f.weights for f in features]).astype(np.float64)
    keys, slots = np.unique(buckets, return_inverse=True)
    sums = np.bincount(slots, weights, minlength=len(keys))
    sums[keys == bias] = 0.0
    return keys, sums
