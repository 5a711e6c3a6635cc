"""ispo's CPU attention with dropout equals the plain computation (scores, padding mask,
softmax, the same dropped probabilities, 1/(1-p), @ v) in value and in gradient, and equals
SDPA when nothing is dropped. Oracle: the formula written out with autograd, and SDPA."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ispo.model.dropout import Dropout, dropout_attention, dropped_positions


def _inputs(padded: bool):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    keep = torch.ones(3, 1, 1, 7, dtype=torch.bool)
    if padded:
        keep[1, ..., 5:] = False
    drop = torch.rand(3, 2, 7, 7, generator=gen) < 0.3
    return [t.requires_grad_() for t in (q, k, v)], keep, drop


def _written_out(q, k, v, keep, drop, p):
    scores = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(~keep, float("-inf"))
    return (scores.softmax(-1).masked_fill(drop, 0.0) / (1 - p)) @ v


def test_values_and_gradients_equal_the_written_out_formula():
    for padded in (False, True):
        (q, k, v), keep, drop = _inputs(padded)
        mine = dropout_attention(q, k, v, keep if padded else None, 0.3, drop)
        ref = _written_out(q, k, v, keep, drop, 0.3)
        torch.testing.assert_close(mine, ref, atol=1e-12, rtol=0)
        g = torch.randn_like(ref)
        for a, b in zip(
            torch.autograd.grad(mine, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)
        ):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_nothing_dropped_is_sdpa():
    (q, k, v), keep, drop = _inputs(True)
    mine = dropout_attention(q, k, v, keep, 0.0, torch.zeros_like(drop))
    torch.testing.assert_close(mine, F.scaled_dot_product_attention(q, k, v, attn_mask=keep))


def test_drawn_mask_drops_about_p():
    q = torch.randn(4, 4, 64, 8)
    out = dropout_attention(q, q, torch.ones_like(q), None, 0.2)  # each row: kept share / 0.8
    assert abs(float(out.mean()) - 1.0) < 0.02


def test_dropped_positions_are_bernoulli_draws():
    """Rate p, and no dependence between neighbours (a pair is dropped with p^2)."""
    torch.manual_seed(0)
    n, p = 400_000, 0.3
    pos = dropped_positions(n, p)
    assert bool((pos[1:] > pos[:-1]).all()) and int(pos[0]) >= 0 and int(pos[-1]) < n
    mask = torch.zeros(n, dtype=torch.bool)
    mask[pos] = True
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(float(mask.float().mean()) - p) < 5 * sd
    pairs = float((mask[1:] & mask[:-1]).float().mean())
    assert abs(pairs - p * p) < 5 * (p * p * (1 - p * p) / n) ** 0.5


def test_hidden_dropout_scales_kept_entries_and_routes_gradients_through_them():
    torch.manual_seed(0)
    drop = Dropout(0.25).train()
    x = torch.randn(64, 32, dtype=torch.float64, requires_grad=True)
    out = drop(x)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / 0.75, atol=1e-12, rtol=0)
    assert 0.15 < 1 - float(kept.double().mean()) < 0.35
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    torch.testing.assert_close(grad, kept.double() / 0.75, atol=1e-12, rtol=0)
    assert drop.eval()(x) is x  # evaluation: nothing dropped
