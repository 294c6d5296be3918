"""`GruEncoder`'s written-out training step against autograd.

The reference below is the step as autograd computes it: `nn.GRUCell` forward, the
sampled-softmax loss, `torch.autograd.grad`, then the same Adagrad updates. Two
encoders with one state take the same clicks, one through `step_many`, the other
through the reference; every parameter they end with must agree to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.torch_model.encoder import _EPS, GruEncoder

DIM, ITEMS, NEGATIVES = 16, 300, 12


def encoder_with_state(seed: int = 3) -> GruEncoder:
    """An encoder with items and nonzero gap and kind rows (they start at zero)."""
    encoder = GruEncoder(DIM, seed, lr=0.1, negatives=NEGATIVES, init_std=0.1, context_lr=0.05)
    for item in range(ITEMS):
        encoder.row(f"i{item}")
    noise = torch.Generator().manual_seed(seed)
    encoder._gap_emb.normal_(0, 0.1, generator=noise)
    encoder._kind_emb.normal_(0, 0.1, generator=noise)
    return encoder


def copy_of(encoder: GruEncoder) -> GruEncoder:
    twin = GruEncoder(DIM, 0, encoder.lr, encoder.negatives, encoder.init_std, encoder.context_lr)
    twin.load_state_dict(encoder.state_dict())
    return twin


def adagrad_rows(table: torch.Tensor, sq: torch.Tensor, rows, grads, lr: float) -> None:
    unique, slots = torch.unique(rows, return_inverse=True)
    summed = torch.zeros(len(unique), table.shape[1]).index_add_(0, slots, grads)
    sq[unique] += summed * summed
    table[unique] -= lr * summed / (sq[unique].sqrt() + _EPS)


def reference_step(encoder: GruEncoder, h_prev, last, target, inputs):
    """The step through autograd, drawing the negatives as `step_many` does."""
    targets, lasts = torch.tensor(target), torch.tensor(last)
    b, n = len(last), len(encoder.ids)
    negatives = torch.randint(0, n - 1, (b, encoder.negatives), generator=encoder.generator)
    negatives += (negatives >= targets.unsqueeze(1)).long()
    gaps = torch.tensor([i[0] for i in inputs])
    kinds = torch.tensor([i[1] for i in inputs])
    e_last = encoder.emb[lasts].requires_grad_(True)
    e_target = encoder.emb[targets].requires_grad_(True)
    e_gap = encoder._gap_emb[gaps].requires_grad_(True)
    e_kind = encoder._kind_emb[kinds].requires_grad_(True)
    h = encoder.gru(e_last + e_gap + e_kind, h_prev)
    positive = (h * e_target).sum(1, keepdim=True)
    negative = torch.bmm(encoder.emb[negatives], h.unsqueeze(2)).squeeze(2)
    logits = torch.cat([positive, negative], 1)
    losses = torch.logsumexp(logits, 1) - logits[:, 0]
    params = list(encoder.gru.parameters())
    *param_grads, g_last, g_target, g_gap, g_kind = torch.autograd.grad(
        losses.sum(), [*params, e_last, e_target, e_gap, e_kind]
    )
    with torch.no_grad():
        grad = torch.cat([g.reshape(-1) for g in param_grads])
        encoder._flat_sq.addcmul_(grad, grad)
        encoder._flat.addcdiv_(grad, encoder._flat_sq.sqrt().add_(_EPS), value=-encoder.lr)
        adagrad_rows(encoder._gap_emb, encoder._gap_sq, gaps, g_gap, encoder.context_lr)
        adagrad_rows(encoder._kind_emb, encoder._kind_sq, kinds, g_kind, encoder.context_lr)
        rows = torch.cat([lasts, targets])
        adagrad_rows(encoder.emb, encoder._emb_sq, rows, torch.cat([g_last, g_target]), encoder.lr)
    return h.detach(), losses.detach().tolist()


def assert_same_state(ours: GruEncoder, reference: GruEncoder) -> None:
    mine, theirs = ours.state_dict(), reference.state_dict()
    for key in (
        "embeddings",
        "embeddings_sq",
        "gru_sq",
        "gap_embeddings",
        "gap_sq",
        "kind_embeddings",
        "kind_sq",
    ):
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-5, atol=1e-6, msg=key)
    for name, value in theirs["gru"].items():
        torch.testing.assert_close(mine["gru"][name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "last, target",
    [
        ([5], [7]),
        ([5], [5]),  # one row is both last and target: it steps on the sum
        ([1, 2, 3, 4, 5, 6], [9, 8, 7, 6, 5, 4]),
        ([1, 1, 2, 3], [2, 2, 1, 1]),  # rows repeat across clicks and roles
    ],
)
def test_step_many_matches_autograd_over_several_steps(last, target):
    ours = encoder_with_state()
    reference = copy_of(ours)
    rng = np.random.default_rng(0)
    b = len(last)
    inputs = [(int(rng.integers(0, 10)), int(rng.integers(0, 3))) for _ in range(b)]
    h_ours = h_reference = torch.from_numpy(rng.normal(0, 0.5, (b, DIM)).astype(np.float32))
    for _ in range(5):  # chained: each step starts from the state the last one left
        h_ours, losses_ours = ours.step_many(h_ours, last, target, inputs)
        h_reference, losses_reference = reference_step(reference, h_reference, last, target, inputs)
        torch.testing.assert_close(h_ours, h_reference, rtol=1e-5, atol=1e-6)
        assert losses_ours == pytest.approx(losses_reference, rel=1e-5, abs=1e-6)
        assert_same_state(ours, reference)


def test_step_is_step_many_of_one_click():
    one, many = encoder_with_state(), encoder_with_state()
    h = torch.full((DIM,), 0.2)
    h_one, loss_one = one.step(h, 4, 11, (2, 1))
    h_many, losses_many = many.step_many(h.unsqueeze(0), [4], [11], [(2, 1)])
    assert torch.equal(h_one, h_many[0]) and losses_many == [loss_one]
    assert torch.equal(one.emb, many.emb) and torch.equal(one._flat, many._flat)


def test_read_is_the_gru_cell_forward():
    encoder = encoder_with_state()
    h = torch.linspace(-1, 1, 3 * DIM).reshape(3, DIM)
    rows, inputs = [0, 7, 299], [(0, 0), (4, 1), (9, 2)]
    x = encoder.emb[rows] + encoder._gap_emb[[0, 4, 9]] + encoder._kind_emb[[0, 1, 2]]
    with torch.no_grad():
        expected = encoder.gru(x, h)
    torch.testing.assert_close(encoder.read_many(rows, inputs, h), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(encoder.read(7, (4, 1), h[1]), expected[1], rtol=1e-5, atol=1e-6)


def test_the_gru_parameters_are_laid_out_as_the_step_reads_them():
    names = [name for name, _ in GruEncoder(4, 0, 0.1, 2, 0.1, 0.0).gru.named_parameters()]
    assert names == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
