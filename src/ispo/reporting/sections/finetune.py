"""The fine-tuning section: per-epoch loss, accuracy and macro-F1, the confusion matrix, and the
folder's own figures (training curve, confusion matrix), from the ``metrics.json`` of an
``ispo finetune`` run: ``{"epochs": [{"epoch", "train_loss", "val_loss", "val_accuracy",
"val_macro_f1"}, ...], "confusion_matrix": [[...]], "classes": [...]}``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ispo.errors import IspoError
from ispo.reporting.figures import Figures
from ispo.reporting.sections import SCRATCH_NOTE, Section, label, read_json
from ispo.training.settings import selection_key

MARKERS = ("metrics.json",)
EPOCH_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1")


def is_finetune(path: Path) -> bool:
    """A ``metrics.json`` with per-epoch figures."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("epochs"), list)


def finds(folder: Path) -> list[Path]:
    path = folder / "metrics.json"
    return [folder] if path.is_file() and is_finetune(path) else []


def _confusion(m: dict) -> dict | None:
    matrix, classes = m.get("confusion_matrix"), m.get("classes")
    if not matrix or not classes or len(matrix) != len(classes):
        return None
    return {
        "headers": ["true \\ predicted", *classes],
        "rows": [[c, *r] for c, r in zip(classes, matrix)],
    }


def section(folder: Path, figures: Figures) -> Section:
    m = read_json(folder / "metrics.json")
    epochs = [e for e in m.get("epochs", []) if isinstance(e, dict)]
    if not epochs:
        raise IspoError(f"{folder / 'metrics.json'} has no epochs: rerun ispo finetune")
    best = _best(epochs, m.get("best_epoch"))
    extra: list[list[Any]] = [
        [k, v]
        for k, v in m.items()
        if isinstance(v, (int, float, str)) and k not in ("model", "random_init")
    ]
    test = m.get("test") if isinstance(m.get("test"), dict) else None
    settings = m.get("settings") if isinstance(m.get("settings"), dict) else {}
    random_init = bool(m.get("random_init"))
    images = [
        img
        for png in sorted(folder.glob("*.png"))
        if (img := figures.copy(png, f"{label(folder)}-{png.stem}", png.stem.replace("_", " ")))
    ]
    context = dict(
        label=label(folder),
        notes=[SCRATCH_NOTE.format(what="this classifier")] if random_init else [],
        model=m.get("model"),
        epochs=epochs,
        best=best,
        epoch_rows=[[e.get(k) for k in EPOCH_KEYS] for e in epochs],
        extra=extra,
        test=test,
        settings=[[k, v] for k, v in settings.items() if v is not None],
        confusion=_confusion(m),
        images=images,
    )
    # trained weights: the report's RANDOM WEIGHTS warning is not for it, the note above is
    return Section("finetune.md.j2", context)


def _best(epochs: list[dict], kept: int | None) -> dict | None:
    """The epoch whose weights were kept (metrics.json's ``best_epoch``), else the best by
    validation macro-F1, ties to the lower validation loss, as ``ispo finetune`` keeps them."""
    by_number = {e.get("epoch"): e for e in epochs}
    if kept in by_number:
        return by_number[kept]
    scored = [e for e in epochs if e.get("val_macro_f1") is not None]
    return max(scored, key=selection_key) if scored else None
