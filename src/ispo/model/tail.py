"""What a cell classifier reads, run after the pooled layer without running the encoder twice.

A classifier reads the *last* layer's first token; embeddings and perturbations pool the layer
Geneformer asks for (``emb_layer=-1``: the penultimate one). The encoder stops at the pooled
layer, as it does without a classifier, and :class:`ClassifierTail` carries on from its hidden
states: the last layer for the first token only, then the head. Only the first token's output
is needed, so the last layer computes keys and values for every token (2 of a layer's 12 h^2
multiply-adds per token) and everything else for one token per cell: about a sixth of a layer,
and nothing at all when there is no classifier. With ``emb_layer=0`` the pooled layer is the
last one and the tail is the head alone.
"""

from __future__ import annotations

import torch
from torch import nn

from ispo.model.encoder import Block, block_tensors
from ispo.model.head import ClassifierHead
from ispo.model.presets import GeneformerConfig


class ClassifierTail(nn.Module):
    """Logits of each cell from the hidden states of the pooled layer (fp32 head)."""

    def __init__(self, block: Block | None, head: ClassifierHead) -> None:
        super().__init__()
        self.block, self.head = block, head

    @classmethod
    def build(
        cls,
        cfg: GeneformerConfig,
        sd: dict[str, torch.Tensor],
        n_run: int,
        head: ClassifierHead,
        dtype: torch.dtype,
    ) -> ClassifierTail:
        """The tail after ``n_run`` layers: the last layer (in the encoder's ``dtype``) when
        the encoder stops one short of it, none when it ran them all."""
        if n_run == cfg.n_layers:
            return cls(None, head).eval()
        if n_run != cfg.n_layers - 1:
            raise ValueError(f"a tail follows the last or penultimate layer, not layer {n_run}")
        with torch.device("meta"):
            block = Block(cfg)
        block.load_state_dict(block_tensors(sd, cfg.n_layers - 1), strict=True, assign=True)
        device = head.classifier.weight.device
        return cls(block.to(device=device, dtype=dtype), head).eval()

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """(B, classes) fp32 logits of padded hidden states (B, L, h); ``keep`` (B, L) marks
        the real tokens (None: no padding)."""
        first = hidden[:, 0] if self.block is None else self._first_token(hidden, keep)
        return self.head(first.float())

    def _first_token(self, hidden: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """The last (post-LN BERT) layer's output at the first token: its query against every
        token's key and value, then the rest of the layer on that one row (the block's
        ``first_only`` path, which fine-tuning trains through)."""
        mask = None if keep is None else keep[:, None, None, :]
        return self.block(hidden, mask, first_only=True)[:, 0]
