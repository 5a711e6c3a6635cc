"""Fine-tuned checkpoints: which layout a folder holds, and the cell classifier it carries.

Three fine-tuned layouts load as ``--model`` beside a plain pretrained one; each has the same
``bert.*`` encoder, so embeddings and perturbations run on it unchanged:

- ``BertForSequenceClassification`` (Geneformer's ``Classifier(classifier="cell")``, Helical's
  fine-tuning model, ``ispo finetune``): a pooler and ``classifier.*`` reading the last layer's
  first token. Its head is kept (:class:`Classifier`) and gives each cell's class
  probabilities.
- ``BertForTokenClassification`` (Geneformer's gene classifier): ``classifier.*`` on every
  token, no pooler. It labels genes, not cells: no class probabilities.
- Geneformer's multi-task model (``GeneformerMultiTask``: ``bert.*`` and
  ``classification_heads.<i>.*``, one linear head per task on the first token, no pooler, task
  names kept outside the checkpoint): Geneformer-specific, no class probabilities.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ispo.errors import IspoError
from ispo.model.head import CLASSIFIER, POOLER, ClassifierHead, class_names

log = logging.getLogger(__name__)


class CheckpointLayout(StrEnum):
    """What a checkpoint folder holds besides the encoder."""

    ENCODER = "encoder"  # BertForMaskedLM, BertModel: no classifier
    SEQUENCE = "sequence classifier"  # BertForSequenceClassification
    TOKEN = "token classifier"  # BertForTokenClassification
    MULTI_TASK = "Geneformer multi-task model"  # GeneformerMultiTask


def detect_layout(config: dict, sd: dict[str, torch.Tensor]) -> CheckpointLayout:
    """The layout of a checkpoint from its (normalised) state dict; ``architectures`` in
    ``config.json`` tells a token classifier that kept a pooler from a sequence classifier."""
    if any(k.startswith("classification_heads.") for k in sd):
        return CheckpointLayout.MULTI_TASK
    if f"{CLASSIFIER}.weight" not in sd:
        return CheckpointLayout.ENCODER
    archs = " ".join(config.get("architectures") or [])
    if "TokenClassification" in archs:
        return CheckpointLayout.TOKEN
    if f"{POOLER}.weight" in sd:
        return CheckpointLayout.SEQUENCE
    if "SequenceClassification" in archs:
        raise IspoError(
            f"config.json says {archs} but the weights have no pooler ({POOLER}.*): "
            "save the model again with transformers' save_pretrained"
        )
    return CheckpointLayout.TOKEN


@dataclass(frozen=True)
class Classifier:
    """A checkpoint's cell classifier: its head (fp32, eval) and its class names in id order."""

    head: ClassifierHead
    classes: tuple[str, ...]

    def to(self, device: torch.device) -> Classifier:
        return Classifier(self.head.to(device).eval(), self.classes)

    def prob_columns(self, probs: np.ndarray, prefix: str = "prob_") -> dict[str, np.ndarray]:
        """``{prefix<class>: column}`` of (n, classes) probabilities (or their changes)."""
        return {f"{prefix}{c}": probs[:, j].astype(np.float32) for j, c in enumerate(self.classes)}

    def cell_columns(self, probs: np.ndarray) -> dict[str, np.ndarray | pd.Categorical]:
        """The obs columns ``ispo embed`` adds: ``pred_class`` and ``prob_<class>`` (NaN rows:
        cells not embedded)."""
        return {"pred_class": self.predicted(probs), **self.prob_columns(probs)}

    def perturb_columns(self, probs: np.ndarray, orig_probs: np.ndarray) -> dict[str, np.ndarray]:
        """The columns ``ispo perturb`` adds to each row: ``prob_<class>`` after the
        perturbation, ``delta_prob_<class>`` (after minus the original cell's),
        ``pred_class`` (most probable after) and ``orig_pred_class`` (of the original cell)."""
        names = np.asarray(self.classes, dtype=object)
        return {
            **self.prob_columns(probs),
            **self.prob_columns(probs - orig_probs, "delta_prob_"),
            "pred_class": names[probs.argmax(1)],
            "orig_pred_class": names[orig_probs.argmax(1)],
        }

    def predicted(self, probs: np.ndarray) -> pd.Categorical:
        """Each row's most probable class (missing where the row is NaN: a cell not run)."""
        codes = np.where(np.isnan(probs).any(1), -1, np.nan_to_num(probs, nan=-1.0).argmax(1))
        return pd.Categorical.from_codes(codes, categories=list(self.classes))


def read_classifier(root: Path, sd: dict[str, torch.Tensor]) -> Classifier | None:
    """The cell classifier of the checkpoint in ``root`` (None when it has none, with a log
    line saying why a fine-tuned folder adds no class probabilities)."""
    config = json.loads((root / "config.json").read_text())
    layout = detect_layout(config, sd)
    if layout in (CheckpointLayout.TOKEN, CheckpointLayout.MULTI_TASK):
        log.info(
            "%s is a %s: its encoder runs as any Geneformer's, but its head does not classify "
            "cells, so no class-probability columns are added",
            root,
            layout,
        )
    if layout != CheckpointLayout.SEQUENCE:
        return None
    head = ClassifierHead.from_hf_state_dict(sd)
    if head is None:  # a classifier weight of the wrong shape
        raise IspoError(f"the classifier weights in {root} are not a linear layer: check them")
    classes = class_names(config)
    if len(classes) != head.n_classes or len(set(classes)) != len(classes):
        raise IspoError(
            f"config.json in {root} names classes {classes} but the classifier has "
            f"{head.n_classes} outputs: fix id2label (one distinct name per output)"
        )
    log.info("%s is a cell classifier over %s", root, ", ".join(classes))
    return Classifier(head.float().eval(), tuple(classes))
