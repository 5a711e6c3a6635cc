"""How a cell classifier is trained: one settings object that the CLI, YAML configs and the API
all build (``ispo finetune``, ``ispo.finetune``).

Defaults follow Geneformer's ``Classifier`` for cell classifiers where they carry over (lr 5e-5,
linear schedule, weight decay 0.001, 10 epochs, an 80/10/10 split; AdamW with transformers'
Trainer's betas, epsilon, gradient clipping at 1.0 and no decay on biases and LayerNorms). Its
warm-up of 500 steps assumes batches of 12 cells; token-budget batches hold more cells, so the
warm-up here is a share of all steps by default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ispo.errors import IspoError
from ispo.settings import Choice, Precision


class Schedule(Choice):
    """Learning rate after the warm-up: linear or cosine decay to zero."""

    LINEAR = "linear"
    COSINE = "cosine"


@dataclass(frozen=True)
class TrainSettings:
    """Settings of one fine-tuning run.

    Attributes
    ----------
    epochs
        Passes over the training cells (fewer with early stopping).
    lr
        Peak learning rate (AdamW).
    warmup
        Warm-up: steps when >= 1, a share of all steps when < 1 (as transformers'
        ``warmup_steps`` reads it).
    weight_decay
        AdamW's decoupled weight decay (not on biases and LayerNorm weights).
    schedule
        ``linear`` or ``cosine`` decay after the warm-up.
    freeze_layers
        Geneformer's meaning: the first N encoder layers are not trained (the embeddings are).
    dropout
        Hidden-state and attention-probability dropout while training, as transformers'
        ``from_pretrained(hidden_dropout_prob=..., attention_probs_dropout_prob=...)`` sets
        them; saved in the folder's config.json. None: the checkpoint's own rates (Geneformer
        V1 0.02, V2 0.1), which suit pretraining on millions of cells more than a few thousand.
    patience
        Stop after this many epochs without a better validation macro-F1 (None: never).
    batch_tokens
        Token budget of a training batch (cells x its longest cell); None: the device default.
    precision
        ``fp32``, ``bf16`` or ``fp16`` autocast over fp32 master weights; ``auto`` is bf16 where
        the hardware has bf16 matrix units, fp32 elsewhere (this AVX2 CPU: fp32).
    val_size, test_size
        Shares of the cells held out for validation (each epoch) and test (once, at the end),
        stratified by label.
    seed
        Seed of the split, the head's initial weights, the batch order and dropout.
    max_grad_norm
        Gradient clipping (None: off).
    max_input
        Model input size: each cell keeps its N highest-ranked genes, as Geneformer's
        ``model_input_size`` truncates (None: the model's own, 2,048 for V1). The saved
        config.json says ``max_position_embeddings: N`` and holds the first N position rows:
        ``ispo embed``/``perturb`` cut cells to N as training did, and Geneformer reads its
        model input size from that field. Short inputs train faster, and a classifier trained
        from scratch on few cells then cannot key on genes a cell expresses only at the tail of
        its ranking.
    """

    epochs: int = 10
    lr: float = 5e-5
    warmup: float = 0.1
    weight_decay: float = 0.001
    schedule: Schedule = Schedule.LINEAR
    freeze_layers: int = 0
    dropout: float | None = None
    patience: int | None = None
    batch_tokens: int | None = None
    precision: Precision = Precision.AUTO
    val_size: float = 0.1
    test_size: float = 0.1
    seed: int = 0
    max_grad_norm: float | None = 1.0
    max_input: int | None = None

    def __post_init__(self) -> None:
        for name, kind in (("schedule", Schedule), ("precision", Precision)):
            object.__setattr__(self, name, kind.parse(getattr(self, name), name))
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, not {self.epochs}"),
            (self.lr > 0, f"lr must be positive, not {self.lr}"),
            (self.warmup >= 0, f"warmup must be >= 0 (steps, or a share < 1), not {self.warmup}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, not {self.weight_decay}"),
            (self.freeze_layers >= 0, f"freeze_layers must be >= 0, not {self.freeze_layers}"),
            (
                self.dropout is None or 0 <= self.dropout < 1,
                f"dropout must be in [0, 1), not {self.dropout}",
            ),
            (self.patience is None or self.patience >= 1, "patience must be at least 1 epoch"),
            (self.batch_tokens is None or self.batch_tokens >= 1, "batch_tokens must be >= 1"),
            (
                self.max_input is None or self.max_input >= 4,
                f"max_input must be at least 4 tokens, not {self.max_input}",
            ),
            (0 < self.val_size < 1, f"val_size must be between 0 and 1, not {self.val_size}"),
            (0 <= self.test_size < 1, f"test_size must be in [0, 1), not {self.test_size}"),
            (self.val_size + self.test_size < 1, "val_size + test_size must leave training cells"),
        ]
        for ok, message in checks:
            if not ok:
                raise IspoError(message)

    def warmup_steps(self, total_steps: int) -> int:
        """Warm-up steps of a run of ``total_steps`` optimizer steps."""
        return int(self.warmup) if self.warmup >= 1 else round(self.warmup * total_steps)

    def replace(self, **changes: Any) -> TrainSettings:
        """A copy with ``changes`` applied; ``None`` values leave a field as it is."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Plain data (Enums as their strings), for metrics.json, configs and resume checks."""
        return {k: (str(v) if isinstance(v, Choice) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSettings:
        """Settings from plain data (``freeze-layers`` or ``freeze_layers``); other keys of a
        config are ignored."""
        names = {f.name for f in fields(cls)}
        kept = {k.lstrip("-").replace("-", "_"): v for k, v in d.items()}
        return cls(**{k: v for k, v in kept.items() if k in names and v is not None})


def selection_key(epoch: dict[str, Any]) -> tuple[float, float]:
    """How the kept epoch is chosen (early stopping and the saved weights; ``ispo report``
    reads a run the same way): the higher validation macro-F1, ties to the lower validation
    loss. ``epoch`` is one row of metrics.json's ``epochs``."""
    return epoch["val_macro_f1"], -(epoch.get("val_loss") or 0.0)
