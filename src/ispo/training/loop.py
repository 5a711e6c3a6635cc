"""One training loop that reads top to bottom: batches, forward under autocast, loss, backward,
clip, step; then validation. Its state (weights, optimizer, schedule, scaler, RNG) is what an
epoch checkpoint saves, so a resumed run continues exactly where the stopped one was.

Batches are planned for every epoch up front from ``(seed, epoch)`` (length buckets with a
token budget, :func:`ispo.runtime.batching.bucket_batches`): the schedule knows its number of
steps, and a resumed epoch gets the batches the stopped run would have had.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ispo.runtime.batching import bucket_batches
from ispo.runtime.runner import Tokens
from ispo.settings import Precision
from ispo.training.classifier import CellClassifier
from ispo.training.data import LabelledCells
from ispo.training.settings import TrainSettings

AUTOCAST = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


@dataclass
class EpochMetrics:
    """One epoch's figures (the keys of metrics.json's ``epochs``)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    train_cells_per_s: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Scores:
    """Loss, accuracy, macro-F1 and predictions of a set of labelled cells."""

    loss: float
    accuracy: float
    macro_f1: float
    predicted: np.ndarray


def score(logits: torch.Tensor, y: np.ndarray, n_classes: int) -> Scores:
    """Cross-entropy, accuracy and macro-F1 (scikit-learn's, over every class) of ``logits``."""
    from sklearn.metrics import accuracy_score, f1_score

    target = torch.from_numpy(y).to(logits.device)
    loss = float(F.cross_entropy(logits.float(), target))
    pred = logits.argmax(-1).cpu().numpy()
    f1 = f1_score(y, pred, average="macro", labels=list(range(n_classes)), zero_division=0)
    return Scores(loss, float(accuracy_score(y, pred)), float(f1), pred)


def _optimizer(clf: CellClassifier, s: TrainSettings) -> torch.optim.AdamW:
    """AdamW as transformers' Trainer sets it up: no weight decay on biases and LayerNorms."""
    norms = {
        id(p) for m in clf.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()
    }
    decay, rest = [], []
    for name, p in clf.named_parameters():
        if p.requires_grad:
            (rest if name.endswith("bias") or id(p) in norms else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": s.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)


class Trainer:
    """Trains ``clf`` on ``train`` and scores it on ``val``, one epoch per :meth:`epoch` call."""

    def __init__(
        self,
        clf: CellClassifier,
        train: LabelledCells,
        val: LabelledCells,
        settings: TrainSettings,
        *,
        batch_tokens: int,
        progress: bool = True,
    ) -> None:
        from transformers import get_scheduler

        self.clf, self.train_cells, self.val_cells, self.s = clf, train, val, settings
        self.batch_tokens, self.progress = batch_tokens, progress
        self.device = clf.token_types.device
        self.plan = [
            bucket_batches(
                train.cells.lengths, batch_tokens, np.random.default_rng([settings.seed, e])
            )
            for e in range(settings.epochs)
        ]
        steps = sum(map(len, self.plan))
        self.opt = _optimizer(clf, settings)
        self.sched = get_scheduler(
            str(settings.schedule), self.opt, settings.warmup_steps(steps), steps
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=settings.precision == Precision.FP16
        )

    def autocast(self) -> AbstractContextManager:
        """bf16/fp16 autocast over the fp32 weights, or nothing in fp32."""
        dtype = AUTOCAST.get(self.s.precision)
        if dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def epoch(self, epoch: int) -> EpochMetrics:
        """Train one epoch (``epoch`` counts from 1), then score the validation cells."""
        t0 = time.perf_counter()
        loss = self.train_epoch(epoch)
        seconds = time.perf_counter() - t0
        val = self.evaluate(self.val_cells)
        cells_per_s = len(self.train_cells) / seconds
        return EpochMetrics(
            epoch, loss, val.loss, val.accuracy, val.macro_f1, cells_per_s, time.perf_counter() - t0
        )

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training cells; the mean loss per cell."""
        clf, cells, pad = self.clf, self.train_cells, self.clf.encoder.cfg.pad_id
        clf.train()
        y = torch.from_numpy(cells.y).to(self.device)
        total, seen = 0.0, 0
        desc = f"epoch {epoch}/{self.s.epochs}"
        with tqdm(total=len(cells), unit="cell", desc=desc, disable=not self.progress) as bar:
            for idx in self.plan[epoch - 1]:
                t = Tokens.from_cells(cells.cells, idx, self.device)
                with self.autocast():
                    logits = clf(t.padded(pad), None if t.uniform else t.lengths)
                loss = F.cross_entropy(logits.float(), y[torch.from_numpy(idx).to(self.device)])
                self._step(loss)
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
                bar.update(len(idx))
                bar.set_postfix(loss=f"{total / seen:.4f}")
        return total / seen

    def _step(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()
        if self.s.max_grad_norm is not None:
            self.scaler.unscale_(self.opt)
            params = [p for p in self.clf.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, self.s.max_grad_norm)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)

    def evaluate(self, data: LabelledCells) -> Scores:
        """Scores of ``data`` with the current weights (eval mode, no dropout)."""
        with self.autocast():
            logits = self.clf.logits(data.cells, self.batch_tokens)
        return score(logits, data.y, len(self.clf.classes))

    def state_dict(self) -> dict:
        """Everything a resumed run needs besides the history: weights, optimizer, schedule,
        scaler and the RNG that dropout draws from."""
        state = {
            "model": self.clf.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.clf.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
