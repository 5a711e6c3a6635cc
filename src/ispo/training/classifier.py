"""The cell classifier that ``ispo finetune`` trains: the fast encoder (every layer) and the
sequence-classification head, saved as the ``BertForSequenceClassification`` folder that
transformers, Geneformer and ispo load as they are.

The head reads the last layer's first token (:meth:`ispo.model.encoder.Encoder.first_token`,
which runs that layer for the first token alone), through the pooler, as transformers does.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ispo.model.encoder import Encoder
from ispo.model.head import POOLER, ClassifierHead
from ispo.model.load import INIT_STD, GeneformerModel
from ispo.runtime.batching import token_budget_batches
from ispo.runtime.runner import Tokens
from ispo.tokens import TokenizedCells

log = logging.getLogger(__name__)
TOKEN_TYPES = "bert.embeddings.token_type_embeddings.weight"


class CellClassifier(nn.Module):
    """Logits of padded cells: ``head(encoder.first_token(ids, lengths))``."""

    def __init__(
        self, encoder: Encoder, head: ClassifierHead, classes: list[str], token_types: torch.Tensor
    ) -> None:
        super().__init__()
        self.encoder, self.head, self.classes = encoder, head, list(classes)
        # the checkpoint's token-type table (row 0 is trained in the encoder), saved with it
        self.register_buffer("token_types", token_types, persistent=False)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids, (B,) lengths (None: no padding) -> (B, classes) logits."""
        return self.head(self.encoder.first_token(ids, lengths))

    @classmethod
    def from_model(
        cls, model: GeneformerModel, classes: list[str], seed: int, dropout: float | None = None
    ) -> CellClassifier:
        """A classifier on a loaded model's weights (copied: training never writes into the
        model). As transformers' ``from_pretrained(num_labels=N)``: a head in the checkpoint
        with N classes is kept, a pooler is kept, anything missing starts from BERT's seeded
        init (normal(0, 0.02) weights, zero biases). ``dropout`` replaces the config's hidden
        and attention rates (None: keep them)."""
        cfg, sd = model.config, model.state_dict
        if dropout is not None:
            cfg = dataclasses.replace(cfg, hidden_dropout=dropout, attention_dropout=dropout)
        bert = {k: v.detach().clone() for k, v in sd.items() if k.startswith("bert.")}
        encoder = Encoder.from_hf_state_dict(cfg, bert, cfg.n_layers)
        head = ClassifierHead.from_hf_state_dict(sd, cfg.hidden_dropout)
        if head is not None and head.n_classes == len(classes):
            log.info("keeping the checkpoint's %d-class head", head.n_classes)
        else:
            head = _new_head(cfg.hidden, len(classes), cfg.hidden_dropout, seed, sd)
        types = bert[TOKEN_TYPES].clone()
        return cls(encoder, head.float(), classes, types).to(model.device)

    def freeze(self, n_layers: int) -> list[str]:
        """Stop training the first ``n_layers`` encoder layers (Geneformer's ``freeze_layers``:
        the embeddings stay trainable); the frozen parameters' names."""
        frozen = []
        for i, block in enumerate(self.encoder.blocks[:n_layers]):
            for name, p in block.named_parameters():
                p.requires_grad_(False)
                frozen.append(f"encoder.blocks.{i}.{name}")
        return frozen

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight under ``BertForSequenceClassification``'s names, on the CPU."""
        sd = {**self.encoder.hf_state_dict(self.token_types), **self.head.hf_state_dict()}
        return {k: v.detach().float().cpu().contiguous() for k, v in sd.items()}

    def save_pretrained(self, folder: Path) -> None:
        """``config.json`` (class names in ``id2label``/``label2id``) and ``model.safetensors``:
        what ``AutoModelForSequenceClassification.from_pretrained(folder)`` loads."""
        from safetensors.torch import save_file

        config = self.encoder.cfg.to_hf()
        config.architectures = ["BertForSequenceClassification"]
        config.id2label = dict(enumerate(self.classes))
        config.label2id = {c: i for i, c in enumerate(self.classes)}
        config.problem_type = "single_label_classification"
        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(folder)
        save_file(self.hf_state_dict(), str(folder / "model.safetensors"), {"format": "pt"})

    def logits(self, cells: TokenizedCells, batch_tokens: int) -> torch.Tensor:
        """(n, classes) float32 logits of every cell, in eval mode (no dropout), without
        gradients; batched by token budget, longest cells first."""
        was_training = self.training
        self.eval()
        device, pad = self.token_types.device, self.encoder.cfg.pad_id
        out = torch.empty(len(cells), len(self.classes), device=device)
        with torch.no_grad():
            for idx in token_budget_batches(cells.lengths, batch_tokens):
                t = Tokens.from_cells(cells, idx, device)
                logits = self(t.padded(pad), None if t.uniform else t.lengths)
                out[torch.from_numpy(idx).to(device)] = logits.float()
        self.train(was_training)
        return out

    def predict_proba(self, cells: TokenizedCells, batch_tokens: int = 16_384) -> np.ndarray:
        """(n, classes) class probabilities (softmax of the logits) of every cell."""
        return torch.softmax(self.logits(cells, batch_tokens), -1).cpu().numpy()


def _new_head(
    hidden: int, n_classes: int, dropout: float, seed: int, sd: dict[str, torch.Tensor]
) -> ClassifierHead:
    """A head with BERT's init, seeded; the checkpoint's pooler when it has one."""
    head = ClassifierHead(hidden, n_classes, dropout)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in (head.pooler, head.classifier):
            lin.weight.normal_(0.0, INIT_STD, generator=gen)
            lin.bias.zero_()
        if f"{POOLER}.weight" in sd:
            head.pooler.weight.copy_(sd[f"{POOLER}.weight"])
            head.pooler.bias.copy_(sd[f"{POOLER}.bias"])
    return head
