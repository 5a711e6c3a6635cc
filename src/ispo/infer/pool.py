"""Cell embeddings from hidden states: mean over gene tokens, or the ``<cls>`` token (V2)."""

from __future__ import annotations

from typing import Literal

import torch

PoolMode = Literal["mean", "cls"]


def gene_mask(lengths: torch.Tensor, width: int, has_cls: bool) -> torch.Tensor:
    """(B, width) bool: True at gene tokens, False at padding and at ``<cls>``/``<eos>``."""
    pos = torch.arange(width, device=lengths.device)
    trim = int(has_cls)
    return (pos[None, :] >= trim) & (pos[None, :] < (lengths - trim)[:, None])


def pool(
    hidden: torch.Tensor, lengths: torch.Tensor, has_cls: bool, mode: PoolMode = "mean"
) -> torch.Tensor:
    """(B, h) float32 cell embeddings of (B, L, h) hidden states; sums are taken in fp32."""
    if mode == "cls":
        return hidden[:, 0].float()
    m = gene_mask(lengths, hidden.shape[1], has_cls).to(torch.float32)  # (B, L)
    summed = torch.bmm(m[:, None, :], hidden.float()).squeeze(1)  # (B, h)
    return summed / m.sum(1, keepdim=True)
