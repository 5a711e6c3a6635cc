"""Cell embeddings from hidden states: mean over gene tokens, or the ``<cls>`` token (V2)."""

from __future__ import annotations

import numpy as np
import torch

from ispo.model.encoder import Packed
from ispo.settings import Pool


def gene_mask(lengths: torch.Tensor, width: int, has_cls: bool) -> torch.Tensor:
    """(B, width) bool: True at gene tokens, False at padding and at ``<cls>``/``<eos>``."""
    pos = torch.arange(width, device=lengths.device)
    trim = int(has_cls)
    return (pos[None, :] >= trim) & (pos[None, :] < (lengths - trim)[:, None])


def pool(
    hidden: torch.Tensor, lengths: torch.Tensor, has_cls: bool, mode: Pool | str = "mean"
) -> torch.Tensor:
    """(B, h) float32 cell embeddings of (B, L, h) hidden states.

    The masked sum is one batched matmul in the hidden states' dtype (its accumulation is fp32,
    also for bf16/fp16 inputs), so no fp32 copy of the whole batch is made; only the (B, h) sums
    are rounded to the compute dtype before the fp32 division.
    """
    if mode == "cls":
        return hidden[:, 0].float()
    m = gene_mask(lengths, hidden.shape[1], has_cls)  # (B, L)
    summed = torch.bmm(m[:, None, :].to(hidden.dtype), hidden).squeeze(1)  # (B, h)
    return summed.float() / m.sum(1, keepdim=True)


def pool_packed(
    hidden: torch.Tensor, ctx: Packed, has_cls: bool, mode: Pool | str = "mean"
) -> torch.Tensor:
    """(B, h) float32 cell embeddings of packed (T, h) hidden states (see ``Packed``)."""
    if mode == "cls":
        return hidden[ctx.cu_seqlens[:-1].long()].float()
    trim = int(has_cls)
    gene = (ctx.pos >= trim) & (ctx.pos < (ctx.lengths - trim)[ctx.seq_of])
    sums = torch.zeros(len(ctx.lengths), hidden.shape[1], device=hidden.device)
    sums.index_add_(0, ctx.seq_of[gene], hidden[gene].float())
    return sums / (ctx.lengths - 2 * trim)[:, None].float()


def rowwise_cosine(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``X`` with the same row of ``Y``, in float64.

    A zero row has no direction: two zero rows are identical (1), a zero row against a non-zero
    row is as different as it gets for a consistency check (0).
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    nx = np.linalg.norm(X, axis=1)
    ny = np.linalg.norm(Y, axis=1)
    denom = nx * ny
    cos = np.where(nx + ny == 0, 1.0, 0.0)
    np.divide((X * Y).sum(axis=1), denom, out=cos, where=denom > 0)
    return np.clip(cos, -1.0, 1.0)
