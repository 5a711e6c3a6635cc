"""The cell-classification head of a fine-tuned Geneformer, as transformers lays it out.

``BertForSequenceClassification`` (what Geneformer's ``Classifier`` and Helical's fine-tuning
model save) reads the *last* layer's first token through the BERT pooler (dense + tanh), then
dropout and one linear layer. The names here map one to one onto that checkpoint's
(``bert.pooler.dense.*``, ``classifier.*``), so a head trained by ispo saves as a checkpoint
transformers and Geneformer load as they are, and a head trained by them loads here.
"""

from __future__ import annotations

import torch
from torch import nn

#: checkpoint names of the pooler and the classifier, transformers' spelling
POOLER = "bert.pooler.dense"
CLASSIFIER = "classifier"


class ClassifierHead(nn.Module):
    """``classifier(dropout(tanh(pooler(h[:, 0]))))``: logits from the first token's state."""

    def __init__(self, hidden: int, n_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pooler = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, n_classes)

    @property
    def n_classes(self) -> int:
        return self.classifier.out_features

    def forward(self, first_token: torch.Tensor) -> torch.Tensor:
        """``first_token``: (B, h) last-layer states of each cell's first token -> (B, classes)."""
        return self.classifier(self.dropout(torch.tanh(self.pooler(first_token))))

    @classmethod
    def from_hf_state_dict(
        cls, sd: dict[str, torch.Tensor], dropout: float = 0.0
    ) -> ClassifierHead | None:
        """The head held in a checkpoint's state dict, or None when it has none (a plain
        ``BertForMaskedLM`` / ``BertModel``, or a token-classification head)."""
        w = sd.get(f"{CLASSIFIER}.weight")
        if w is None or f"{POOLER}.weight" not in sd or w.ndim != 2:
            return None
        head = cls(w.shape[1], w.shape[0], dropout)
        head.load_state_dict(
            {
                "pooler.weight": sd[f"{POOLER}.weight"],
                "pooler.bias": sd[f"{POOLER}.bias"],
                "classifier.weight": w,
                "classifier.bias": sd[f"{CLASSIFIER}.bias"],
            }
        )
        return head

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """This head's tensors under transformers' names (for saving a checkpoint)."""
        return {
            f"{POOLER}.weight": self.pooler.weight.detach(),
            f"{POOLER}.bias": self.pooler.bias.detach(),
            f"{CLASSIFIER}.weight": self.classifier.weight.detach(),
            f"{CLASSIFIER}.bias": self.classifier.bias.detach(),
        }


def class_names(config: dict) -> list[str]:
    """A checkpoint's class names in id order, from its config's ``id2label`` (transformers
    writes the ids as strings); ``LABEL_i`` when the config names none."""
    id2label = config.get("id2label") or {}
    n = int(config.get("num_labels", len(id2label) or 2))
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]
