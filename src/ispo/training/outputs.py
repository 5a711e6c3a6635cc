"""What a fine-tuning run leaves in its folder besides the model: ``metrics.json`` (per epoch:
train loss, validation loss, accuracy, macro-F1; the final confusion matrix; the split, the
settings, the device), ``split.csv`` (every cell's part), ``confusion_matrix.png`` and
``training_curve.png``. Figures of a random-init run say RANDOM-INIT in their titles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

METRICS = "metrics.json"
RANDOM_MARK = "RANDOM-INIT "


def confusion(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> list[list[int]]:
    """Counts, rows = true class, columns = predicted (scikit-learn's layout)."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y, predicted, labels=list(range(n_classes))).tolist()


def write_outputs(folder: Path, metrics: dict, split: pd.DataFrame) -> None:
    """metrics.json, split.csv and the two figures into ``folder`` (the model is there already)."""
    from ispo.evaluation.plots import plot_confusion  # matplotlib: only when writing

    (folder / METRICS).write_text(json.dumps(metrics, indent=2, default=str))
    split.to_csv(folder / "split.csv", index=False)
    mark = RANDOM_MARK if metrics["random_init"] else ""
    plot_confusion(
        metrics["confusion_matrix"],
        metrics["classes"],
        folder / "confusion_matrix.png",
        title=f"{mark}validation, epoch {metrics['best_epoch']} (macro-F1 "
        f"{metrics['validation']['macro_f1']:.3f})",
    )
    plot_curves(metrics["epochs"], folder / "training_curve.png", title=f"{mark}fine-tuning")


def plot_curves(epochs: list[dict], path: Path, *, title: str) -> Path:
    """Loss (train, validation) and validation accuracy / macro-F1 per epoch, side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = [e["epoch"] for e in epochs]
    fig = Figure(figsize=(10, 4), dpi=120)
    FigureCanvasAgg(fig)
    loss_ax, score_ax = fig.subplots(1, 2)
    loss_ax.plot(x, [e["train_loss"] for e in epochs], "o-", label="train")
    loss_ax.plot(x, [e["val_loss"] for e in epochs], "o-", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title=f"{title}: loss")
    score_ax.plot(x, [e["val_accuracy"] for e in epochs], "o-", label="accuracy")
    score_ax.plot(x, [e["val_macro_f1"] for e in epochs], "o-", label="macro-F1")
    score_ax.set(xlabel="epoch", ylabel="validation", ylim=(0, 1.02), title=f"{title}: scores")
    for ax in (loss_ax, score_ax):
        ax.legend(frameon=False)
        ax.set_xticks(x)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
