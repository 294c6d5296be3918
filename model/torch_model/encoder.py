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


def _adagrad(row: torch.Tensor, sq: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
    """One Adagrad step on a row view, in place; `sq` is its sum of squared gradients."""
    sq.addcmul_(grad, grad)
    row.addcdiv_(grad, sq.sqrt().add_(_EPS), value=-lr)


def _adagrad_rows(
    table: torch.Tensor, sq: torch.Tensor, rows: torch.Tensor, grads: torch.Tensor, lr: float
) -> None:
    """One Adagrad step on `table`'s `rows`, in place, with `grads[i]` for `rows[i]`:
    a row given several times takes one step on the sum of its gradients."""
    unique, slots = torch.unique(rows, return_inverse=True)
    summed = torch.zeros(len(unique), table.shape[1]).index_add_(0, slots, grads)
    sq[unique] += summed * summed
    table[unique] -= lr * summed / (sq[unique].sqrt() + _EPS)


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
        vector: np.ndarray = self.emb[row].numpy().copy()
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

    def pack(self, h: torch.Tensor, h_next: torch.Tensor, inputs: ClickInputs) -> tuple[float, ...]:
        """The context state after a click: (h, h_next, the click's inputs)."""
        return (*h.tolist(), *h_next.tolist(), *map(float, inputs))

    def read(self, row: int, inputs: ClickInputs, h: torch.Tensor) -> torch.Tensor:
        """GRU(emb[row] + gap + kind, h) without gradients: the state after a click."""
        with torch.no_grad():
            after: torch.Tensor = self.gru(self._input(self.emb[row], inputs), h.unsqueeze(0))[0]
        return after

    def _input(
        self,
        e: torch.Tensor,
        inputs: ClickInputs,
        gap: torch.Tensor | None = None,
        kind: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The GRU's input for one click, shape (1, dim): the item's embedding plus the
        embeddings of its gap bucket and event kind (the rows given, or the stored ones)."""
        gap = self._gap_emb[inputs[0]] if gap is None else gap
        kind = self._kind_emb[inputs[1]] if kind is None else kind
        return (e + gap + kind).unsqueeze(0)

    def step(
        self, h_prev: torch.Tensor, last: int, target: int, last_input: ClickInputs
    ) -> tuple[torch.Tensor, float | None]:
        """h = GRU(emb[last], h_prev), trained to score `target` above `negatives`
        known rows drawn uniformly (never target): one step of truncated BPTT, Adagrad on
        the GRU and on the rows with a gradient (last, target, the gap and kind rows).
        Returns h (detached) and the sampled-softmax loss, None if nothing trained."""
        n = len(self.ids)
        if self.negatives == 0 or n < 2:
            return self.read(last, last_input, h_prev), None
        # Uniform over the other n - 1 rows: draw from [0, n-1) and skip over target.
        negatives = torch.randint(0, n - 1, (self.negatives,), generator=self.generator)
        negatives += (negatives >= target).long()

        e_last = self.emb[last].clone().requires_grad_(True)
        e_target = self.emb[target].clone().requires_grad_(True)
        e_gap = self._gap_emb[last_input[0]].clone().requires_grad_(True)
        e_kind = self._kind_emb[last_input[1]].clone().requires_grad_(True)
        h = self.gru(self._input(e_last, last_input, e_gap, e_kind), h_prev.unsqueeze(0))[0]
        logits = torch.cat([(h @ e_target).unsqueeze(0), self.emb[negatives] @ h])
        # Cross-entropy with the positive at position 0.
        loss = torch.logsumexp(logits, 0) - logits[0]
        *param_grads, g_last, g_target, g_gap, g_kind = torch.autograd.grad(
            loss, [*self._params, e_last, e_target, e_gap, e_kind]
        )

        with torch.no_grad():
            grad = torch.cat([g.reshape(-1) for g in param_grads])
            self._flat_sq.addcmul_(grad, grad)
            self._flat.addcdiv_(grad, self._flat_sq.sqrt().add_(_EPS), value=-self.lr)
            if self.context_lr > 0:
                gap, kind = last_input
                _adagrad(self._gap_emb[gap], self._gap_sq[gap], g_gap, self.context_lr)
                _adagrad(self._kind_emb[kind], self._kind_sq[kind], g_kind, self.context_lr)
            # Adagrad on the rows with a gradient only: a dense optimiser step would
            # cost O(items) per event for rows whose update is zero anyway.
            if last == target:
                _adagrad(self.emb[last], self._emb_sq[last], g_last + g_target, self.lr)
            else:
                _adagrad(self.emb[last], self._emb_sq[last], g_last, self.lr)
                _adagrad(self.emb[target], self._emb_sq[target], g_target, self.lr)
        return h.detach(), float(loss.detach())

    def read_many(
        self, rows: Sequence[int], inputs: Sequence[ClickInputs], h: torch.Tensor
    ) -> torch.Tensor:
        """`read` for each row of `h` (shape (B, dim)) at once: one GRU call."""
        gaps, kinds = zip(*inputs, strict=True) if inputs else ((), ())
        x = self.emb[list(rows)] + self._gap_emb[list(gaps)] + self._kind_emb[list(kinds)]
        with torch.no_grad():
            after: torch.Tensor = self.gru(x, h)
        return after

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
        (a row two clicks touch gets their sum). With B = 1 it draws and computes what
        `step` does; with B > 1 it is one step where `step` would take B, which is the
        batch path's stated approximation. Returns h (B, dim, detached) and each row's
        loss, None if nothing trained."""
        n, b = len(self.ids), len(last)
        if self.negatives == 0 or n < 2:
            return self.read_many(last, last_inputs, h_prev), None
        targets = torch.tensor(list(target), dtype=torch.int64)
        lasts = torch.tensor(list(last), dtype=torch.int64)
        negatives = torch.randint(0, n - 1, (b, self.negatives), generator=self.generator)
        negatives += (negatives >= targets.unsqueeze(1)).long()
        gaps = torch.tensor([i[0] for i in last_inputs], dtype=torch.int64)
        kinds = torch.tensor([i[1] for i in last_inputs], dtype=torch.int64)

        e_last = self.emb[lasts].requires_grad_(True)
        e_target = self.emb[targets].requires_grad_(True)
        e_gap = self._gap_emb[gaps].requires_grad_(True)
        e_kind = self._kind_emb[kinds].requires_grad_(True)
        h = self.gru(e_last + e_gap + e_kind, h_prev)
        positive = (h * e_target).sum(1, keepdim=True)
        negative = torch.bmm(self.emb[negatives], h.unsqueeze(2)).squeeze(2)
        logits = torch.cat([positive, negative], 1)
        losses = torch.logsumexp(logits, 1) - logits[:, 0]
        *param_grads, g_last, g_target, g_gap, g_kind = torch.autograd.grad(
            losses.sum(), [*self._params, e_last, e_target, e_gap, e_kind]
        )
        with torch.no_grad():
            grad = torch.cat([g.reshape(-1) for g in param_grads])
            self._flat_sq.addcmul_(grad, grad)
            self._flat.addcdiv_(grad, self._flat_sq.sqrt().add_(_EPS), value=-self.lr)
            if self.context_lr > 0:
                _adagrad_rows(self._gap_emb, self._gap_sq, gaps, g_gap, self.context_lr)
                _adagrad_rows(self._kind_emb, self._kind_sq, kinds, g_kind, self.context_lr)
            rows = torch.cat([lasts, targets])
            _adagrad_rows(self.emb, self._emb_sq, rows, torch.cat([g_last, g_target]), self.lr)
        return h.detach(), losses.detach().tolist()

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
