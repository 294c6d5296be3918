"""The user encoder: a GRU over item embeddings that grow by id, trained one event at a
time with row-wise Adagrad (GRU4Rec with sampled-softmax negatives; Hidasi et al. 2016,
https://arxiv.org/abs/1511.06939)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from model.base import EVENT_TYPES

_EPS = 1e-10  # Adagrad's default epsilon
_FEW_ROWS = 64  # up to this many rows, a set tells distinct rows faster than np.unique
# Gap buckets (seconds since the user's previous click): bucket 0 is "no previous
# click", then <= 5 s, 30 s, 2 min, 10 min, 30 min, 2 h, 1 day, 1 week, longer.
_GAP_EDGES = (5.0, 30.0, 120.0, 600.0, 1800.0, 7200.0, 86400.0, 604800.0)
_GAP_BUCKETS = len(_GAP_EDGES) + 2
# Event kinds: the known EVENT_TYPES, then one row for any other type.
_KINDS = len(EVENT_TYPES) + 1
# What the GRU reads besides the item, per click: (gap bucket, event kind).
ClickInputs = tuple[int, int]


def click_inputs(gap: float | None, event_type: str) -> ClickInputs:
    """The gap bucket of `gap` seconds since the user's previous click (None: no
    previous click) and the kind row of `event_type` (unknown types share one)."""
    bucket = 0 if gap is None else 1 + bisect.bisect_left(_GAP_EDGES, gap)
    kind = EVENT_TYPES.index(event_type) if event_type in EVENT_TYPES else len(EVENT_TYPES)
    return bucket, kind


def _adagrad_rows(
    table: np.ndarray, sq: np.ndarray, rows: np.ndarray, grads: np.ndarray, lr: float
) -> None:
    """One Adagrad step on `table`'s `rows`, in place, with `grads[i]` for `rows[i]`:
    a row given several times takes one step on the sum of its gradients. `sq` is the
    table's sum of squared gradients."""
    if len(rows) <= _FEW_ROWS and len(set(rows.tolist())) == len(rows):
        # Distinct rows, the usual case in a small wave: no sort needed.
        unique, summed = rows, grads
    else:
        unique, slots = np.unique(rows, return_inverse=True)
        # torch's index_add_, several times faster here than np.add.at.
        added = torch.zeros(len(unique), grads.shape[1], dtype=torch.float32)
        summed = added.index_add_(0, torch.from_numpy(slots), torch.from_numpy(grads)).numpy()
    squares = sq[unique] + summed * summed
    sq[unique] = squares
    table[unique] -= lr * summed / (np.sqrt(squares) + _EPS)


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b through torch, whose thread count the process sets (`torch.set_num_threads`):
    numpy's OpenBLAS would start threads of its own on the core the broker needs."""
    product: np.ndarray = (torch.from_numpy(a) @ torch.from_numpy(b)).numpy()
    return product


class GruEncoder:
    """Item embeddings, gap and kind rows, and the GRU cell that reads them.

    Item rows are handed out to ids as they first appear (capacity doubles when full),
    so there is no fixed id space and no hashing collision; a new item starts as
    N(0, init_std^2) from the encoder's own seeded generator, which is the only
    randomness (the global RNG is never touched). The GRU reads, per click,
    emb[item] + gap[bucket] + kind[event type]; the gap and kind rows start at zero and
    learn at `context_lr` (0 freezes them). A user's state is `state_size` floats:
    h_prev (before the last click), h (after it), then that click's two inputs.
    Not thread-safe.
    """

    def __init__(
        self, dim: int, seed: int, lr: float, negatives: int, init_std: float, context_lr: float
    ) -> None:
        self.dim = dim
        self.lr = lr
        self.negatives = negatives
        self.init_std = init_std
        self.context_lr = context_lr
        self.generator = torch.Generator().manual_seed(seed)
        # Built on the meta device: nn.GRUCell would initialise from torch's global RNG,
        # which would both ignore our seed and disturb the caller's random state.
        self.gru = nn.GRUCell(dim, dim, device="meta").to_empty(device="cpu")
        # The GRU's parameters become views into one flat tensor so that the Adagrad
        # step is three tensor ops instead of a dozen (optimizer overhead dominated the
        # per-event cost at batch size 1).
        self._params = list(self.gru.parameters())
        self._flat = torch.empty(sum(p.numel() for p in self._params))
        self._flat_sq = torch.zeros_like(self._flat)  # Adagrad's sum of squared gradients
        bound = 1.0 / math.sqrt(dim)
        offset = 0
        for param in self._params:
            view = self._flat[offset : offset + param.numel()].view_as(param)
            # GRUCell's own initialisation, U(-1/sqrt(dim), 1/sqrt(dim)), from our generator.
            view.uniform_(-bound, bound, generator=self.generator)
            param.data = view
            offset += param.numel()

        self.ids: list[str] = []
        self.rows: dict[str, int] = {}
        self.emb = torch.zeros(1024, dim)
        self._emb_sq = torch.zeros(1024, dim)  # Adagrad's sum of squared gradients per row
        self._gap_emb = torch.zeros(_GAP_BUCKETS, dim)
        self._gap_sq = torch.zeros(_GAP_BUCKETS, dim)
        self._kind_emb = torch.zeros(_KINDS, dim)
        self._kind_sq = torch.zeros(_KINDS, dim)
        # Where a new item's row starts before its random draw (None: at zero), set by
        # a model that knows item content.
        self.start: Callable[[str], np.ndarray | None] | None = None

    @property
    def state_size(self) -> int:
        return 2 * self.dim + 2

    def __len__(self) -> int:
        return len(self.ids)

    def vector(self, row: int) -> np.ndarray:
        """A float32 copy of one row's embedding."""
        vector: np.ndarray = self.emb.numpy()[row].copy()
        return vector

    def set_vectors(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Overwrite (or add) item embeddings; leaves the Adagrad state and the
        generator alone, so it never changes what the encoder draws next."""
        rows = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        for item_id, vector in zip(ids, rows, strict=True):
            row = self.rows.get(item_id)
            if row is None:
                row = self._append_row(item_id)
            self.emb[row] = torch.from_numpy(vector)

    def row(self, item_id: str) -> int:
        """The item's row, created if the item is new: at `start(item_id)` plus a
        random vector, or the random vector alone."""
        row = self.rows.get(item_id)
        if row is not None:
            return row
        row = self._append_row(item_id)
        self.emb[row] = torch.randn(self.dim, generator=self.generator) * self.init_std
        base = None if self.start is None else self.start(item_id)
        if base is not None:
            self.emb[row] += torch.from_numpy(base)
        return row

    def _append_row(self, item_id: str) -> int:
        row = len(self.ids)
        if row == len(self.emb):
            self.emb = torch.cat([self.emb, torch.zeros_like(self.emb)])
            self._emb_sq = torch.cat([self._emb_sq, torch.zeros_like(self._emb_sq)])
        self.rows[item_id] = row
        self.ids.append(item_id)
        return row

    def unpack(self, state: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor, ClickInputs]:
        """(h_prev, h, inputs of the last click) from a context's state; zeros and
        (0, 0) for a state this encoder did not write (a baseline's, or none yet)."""
        dim = self.dim
        if len(state) != self.state_size:
            zeros = torch.zeros(dim)
            return zeros, zeros, (0, 0)
        # fromiter reads the first 2 * dim floats in place: no tuple slice.
        both = torch.from_numpy(np.fromiter(state, np.float32, 2 * dim))
        return both[:dim], both[dim:], (int(state[2 * dim]), int(state[2 * dim + 1]))

    def query(self, state: tuple[float, ...]) -> np.ndarray | None:
        """The user's query vector h from a context's state, None if it has none."""
        if len(state) != self.state_size:
            return None
        return np.asarray(state[self.dim : 2 * self.dim], dtype=np.float32)

    def pack(
        self, h: torch.Tensor | np.ndarray, h_next: torch.Tensor | np.ndarray, inputs: ClickInputs
    ) -> tuple[float, ...]:
        """The context state after a click: (h, h_next, the click's inputs)."""
        return (*h.tolist(), *h_next.tolist(), *map(float, inputs))

    def _weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The GRU's weight_ih, weight_hh (3 * dim, dim) and bias_ih, bias_hh (3 * dim),
        gates in GRUCell's order (r, z, n), as float32 views of the flat parameters."""
        flat, d = self._flat.numpy(), self.dim
        w = 3 * d * d
        return (
            flat[:w].reshape(3 * d, d),
            flat[w : 2 * w].reshape(3 * d, d),
            flat[2 * w : 2 * w + 3 * d],
            flat[2 * w + 3 * d :],
        )

    def _inputs(self, rows: np.ndarray, gaps: np.ndarray, kinds: np.ndarray) -> np.ndarray:
        """The GRU's input per click, (B, dim): emb[row] + gap[bucket] + kind[kind]."""
        x: np.ndarray = self.emb.numpy()[rows] + self._gap_emb.numpy()[gaps]
        x += self._kind_emb.numpy()[kinds]
        return x

    def _gru(self, x: np.ndarray, h_prev: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """GRUCell's forward on (B, dim) rows: h and what its backward needs."""
        w_ih, w_hh, b_ih, b_hh = self._weights()
        d = self.dim
        gi = _matmul(x, w_ih.T) + b_ih
        gh = _matmul(h_prev, w_hh.T) + b_hh
        # sigmoid(a) as 0.5 tanh(a / 2) + 0.5: no overflow for large negative a.
        rz = np.tanh(0.5 * (gi[:, : 2 * d] + gh[:, : 2 * d])) * 0.5 + 0.5
        r, z, hn = rz[:, :d], rz[:, d:], gh[:, 2 * d :]
        n = np.tanh(gi[:, 2 * d :] + r * hn)
        h: np.ndarray = n + z * (h_prev - n)
        return h, (r, z, n, hn)

    def read(self, row: int, inputs: ClickInputs, h: torch.Tensor) -> torch.Tensor:
        """GRU(emb[row] + gap + kind, h) without training: the state after a click."""
        return self.read_many([row], [inputs], h.unsqueeze(0))[0]

    def read_many(
        self, rows: Sequence[int], inputs: Sequence[ClickInputs], h: torch.Tensor
    ) -> torch.Tensor:
        """`read` for each row of `h` (shape (B, dim)) at once: one GRU call."""
        gaps, kinds = zip(*inputs, strict=True) if inputs else ((), ())
        x = self._inputs(
            np.asarray(rows, np.int64), np.asarray(gaps, np.int64), np.asarray(kinds, np.int64)
        )
        return torch.from_numpy(self._gru(x, h.numpy())[0])

    def step(
        self, h_prev: torch.Tensor, last: int, target: int, last_input: ClickInputs
    ) -> tuple[torch.Tensor, float | None]:
        """h = GRU(emb[last], h_prev), trained to score `target` above `negatives`
        known rows drawn uniformly (never target): one step of truncated BPTT, Adagrad on
        the GRU and on the rows with a gradient (last, target, the gap and kind rows).
        Returns h (detached) and the sampled-softmax loss, None if nothing trained.
        `step_many` of one click."""
        h, losses = self.step_many(h_prev.unsqueeze(0), [last], [target], [last_input])
        return h[0], None if losses is None else losses[0]

    def step_many(
        self,
        h_prev: torch.Tensor,
        last: Sequence[int],
        target: Sequence[int],
        last_inputs: Sequence[ClickInputs],
    ) -> tuple[torch.Tensor, list[float] | None]:
        """`step` for B clicks of B different users at once (h_prev of shape (B, dim)):
        one forward and backward over the summed loss, each row against its own
        `negatives` uniform negatives, then one Adagrad step on the summed gradients
        (a row two clicks touch gets their sum). With B > 1 it is one step where `step`
        would take B, which is the batch path's stated approximation. Returns h (B, dim,
        detached) and each row's loss, None if nothing trained.

        The gradients are GRUCell's and the sampled softmax's, written out (`_train`):
        autograd's graph cost more than the arithmetic at these sizes. The unit tests
        hold them to autograd's."""
        n, b = len(self.ids), len(last)
        if self.negatives == 0 or n < 2:
            return self.read_many(last, last_inputs, h_prev), None
        targets = np.asarray(target, np.int64)
        # Uniform over the other n - 1 rows: draw from [0, n-1) and skip over target.
        negatives = torch.randint(0, n - 1, (b, self.negatives), generator=self.generator).numpy()
        negatives += negatives >= targets[:, None]
        gaps, kinds = zip(*last_inputs, strict=True)
        h, losses = self._train(
            h_prev.numpy(),
            np.asarray(last, np.int64),
            targets,
            np.asarray(gaps, np.int64),
            np.asarray(kinds, np.int64),
            negatives,
        )
        return torch.from_numpy(h), losses.tolist()

    def _train(
        self,
        h_prev: np.ndarray,
        lasts: np.ndarray,
        targets: np.ndarray,
        gaps: np.ndarray,
        kinds: np.ndarray,
        negatives: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The training step of `step_many`: h = GRU(input of lasts, h_prev), the loss
        of each row (logsumexp of [h . e_target, h . e_negatives] minus the first), and
        Adagrad on the summed loss's gradients for the GRU, the item rows of lasts and
        targets, and the gap and kind rows. Every gradient is taken before any update."""
        d = self.dim
        emb = self.emb.numpy()
        x = self._inputs(lasts, gaps, kinds)
        h, (r, z, n, hn) = self._gru(x, h_prev)
        e_target, e_negative = emb[targets], emb[negatives]
        logits = np.empty((len(h), negatives.shape[1] + 1), dtype=np.float32)
        logits[:, 0] = np.einsum("bd,bd->b", h, e_target)
        logits[:, 1:] = _matmul(e_negative, h[:, :, None])[:, :, 0]
        top = logits.max(1, keepdims=True)
        exp = np.exp(logits - top)
        total = exp.sum(1, keepdims=True)
        losses = (top[:, 0] + np.log(total[:, 0])) - logits[:, 0]
        # d loss / d logits: the softmax minus the positive's one-hot.
        d_logits = exp / total
        d_logits[:, 0] -= 1.0
        d_h = d_logits[:, :1] * e_target + _matmul(d_logits[:, None, 1:], e_negative)[:, 0]
        g_target = d_logits[:, :1] * h
        # Back through h = n + z (h_prev - n), n = tanh(i_n + r h_n), r and z sigmoids.
        d_n = d_h * (1.0 - z) * (1.0 - n * n)
        d_gi = np.empty((len(h), 3 * d), dtype=np.float32)
        d_gi[:, :d] = d_n * hn * r * (1.0 - r)
        d_gi[:, d : 2 * d] = d_h * (h_prev - n) * z * (1.0 - z)
        d_gi[:, 2 * d :] = d_n
        d_gh = d_gi.copy()
        d_gh[:, 2 * d :] = d_n * r
        w_ih = self._weights()[0]
        g_x = _matmul(d_gi, w_ih)
        grad = np.concatenate(
            [
                _matmul(d_gi.T, x).ravel(),
                _matmul(d_gh.T, h_prev).ravel(),
                d_gi.sum(0),
                d_gh.sum(0),
            ]
        )

        flat, flat_sq = self._flat.numpy(), self._flat_sq.numpy()
        flat_sq += grad * grad
        flat -= self.lr * grad / (np.sqrt(flat_sq) + _EPS)
        if self.context_lr > 0:
            # x = e_last + e_gap + e_kind: all three rows get g_x.
            _adagrad_rows(self._gap_emb.numpy(), self._gap_sq.numpy(), gaps, g_x, self.context_lr)
            _adagrad_rows(
                self._kind_emb.numpy(), self._kind_sq.numpy(), kinds, g_x, self.context_lr
            )
        # Adagrad on the rows with a gradient only: a dense optimiser step would cost
        # O(items) per event for rows whose update is zero anyway.
        _adagrad_rows(
            emb,
            self._emb_sq.numpy(),
            np.concatenate([lasts, targets]),
            np.concatenate([g_x, g_target]),
            self.lr,
        )
        return h, losses

    def state_dict(self) -> dict[str, Any]:
        """The encoder's part of the model state (copies)."""
        n = len(self.ids)
        return {
            "dim": self.dim,
            "ids": list(self.ids),
            "embeddings": self.emb[:n].clone(),
            "embeddings_sq": self._emb_sq[:n].clone(),
            "gru": {key: value.clone() for key, value in self.gru.state_dict().items()},
            "gru_sq": self._flat_sq.clone(),
            "generator": self.generator.get_state(),
            "gap_embeddings": self._gap_emb.clone(),
            "gap_sq": self._gap_sq.clone(),
            "kind_embeddings": self._kind_emb.clone(),
            "kind_sq": self._kind_sq.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the encoder's learned state with `state`'s. ValueError if `dim` or a
        shape differs; KeyError if a part is missing."""
        if int(state["dim"]) != self.dim:
            raise ValueError(f"state has dim {state['dim']}, this model {self.dim}")
        ids = [str(i) for i in state["ids"]]
        emb = torch.as_tensor(state["embeddings"], dtype=torch.float32)
        if emb.shape != (len(ids), self.dim):
            raise ValueError(f"embeddings of shape {tuple(emb.shape)} for {len(ids)} ids")
        capacity = max(1024, 1 << max(len(ids) - 1, 0).bit_length())
        self.emb = torch.zeros(capacity, self.dim)
        self.emb[: len(ids)] = emb
        self._emb_sq = torch.zeros(capacity, self.dim)
        self._emb_sq[: len(ids)] = torch.as_tensor(state["embeddings_sq"])
        self.ids = ids
        self.rows = {item_id: row for row, item_id in enumerate(ids)}
        self.gru.load_state_dict(state["gru"])
        self._flat_sq.copy_(torch.as_tensor(state["gru_sq"]))
        self.generator.set_state(state["generator"])
        for name, current in (
            ("gap_embeddings", self._gap_emb),
            ("gap_sq", self._gap_sq),
            ("kind_embeddings", self._kind_emb),
            ("kind_sq", self._kind_sq),
        ):
            value = torch.as_tensor(state[name], dtype=torch.float32)
            if value.shape != current.shape:
                raise ValueError(
                    f"{name} of shape {tuple(value.shape)}, expected {tuple(current.shape)}"
                )
        self._gap_emb = torch.as_tensor(state["gap_embeddings"], dtype=torch.float32).clone()
        self._gap_sq = torch.as_tensor(state["gap_sq"], dtype=torch.float32).clone()
        self._kind_emb = torch.as_tensor(state["kind_embeddings"], dtype=torch.float32).clone()
        self._kind_sq = torch.as_tensor(state["kind_sq"], dtype=torch.float32).clone()
