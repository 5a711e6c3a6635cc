"""``ispo.finetune``: a cell classifier on a Geneformer, trained and saved as the
``BertForSequenceClassification`` folder that transformers, Geneformer's
``InSilicoPerturber(model_type="CellClassifier")`` and ``ispo perturb`` load.

The stage reads top to bottom: labels checked -> cells tokenized -> split -> model -> epochs
(each one checkpointed) -> best weights -> validation / test scores -> the folder, written
whole or not at all.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from ispo.errors import IspoError
from ispo.io.read import Source, open_with_vocab
from ispo.io.vocab import Vocab
from ispo.io.write import check_output, replacing
from ispo.model.load import GeneformerModel, load_model
from ispo.model.variants import auto_precision
from ispo.provenance import device_name, git_commit, versions
from ispo.settings import Precision
from ispo.tracking import Tracker
from ispo.training.checkpoint import EpochCheckpoint
from ispo.training.classifier import CellClassifier
from ispo.training.data import LabelledCells, Split, labelled_cells, read_labels, split_cells
from ispo.training.loop import EpochMetrics, Trainer
from ispo.training.outputs import confusion, write_outputs
from ispo.training.settings import TrainSettings, selection_key

log = logging.getLogger(__name__)
CPU_BATCH_TOKENS, GPU_BATCH_TOKENS = 8_192, 65_536


@dataclass(frozen=True)
class DataOptions:
    """Where the cells, counts and genes are: the input, its label column, the vocabulary."""

    label_key: str
    vocab: str | Vocab | None = None
    layer: str | None = None
    gene_key: str | None = None


def finetune(
    data: str | Path | ad.AnnData | Source,
    model: str | Path | GeneformerModel,
    out: str | Path,
    options: DataOptions,
    settings: TrainSettings | None = None,
    *,
    random_init: bool = False,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    tracker: Tracker | None = None,
) -> dict:
    """Fine-tune a cell classifier on ``options.label_key``; returns the run's metrics.

    ``model`` is a checkpoint folder, a preset (with ``random_init=True``: seeded random
    weights, recorded everywhere) or a loaded model. The result folder ``out`` holds the model
    (config.json, model.safetensors), metrics.json, split.csv and two PNGs; until it is
    written, ``OUT.train/`` holds the last epoch's checkpoint, which ``resume=True`` continues.
    Nothing is written when the input or labels are wrong.
    """
    s = settings or TrainSettings()
    out = check_output(out, overwrite)
    src, voc = open_with_vocab(data, options.vocab)
    labels = read_labels(src, options.label_key)  # bad labels fail here, before any work
    mdl = _model(model, voc, device, random_init, s.seed)
    s = _resolve(s, mdl)
    if s.max_input is not None:
        mdl = mdl.with_max_input(s.max_input)
    cells = labelled_cells(
        src, labels, voc, layer=options.layer, gene_key=options.gene_key,
        max_input=mdl.max_input(voc),
    )  # fmt: skip
    split = split_cells(cells.y, labels.classes, s.val_size, s.test_size, s.seed)
    fingerprint = {
        "input": src.fingerprint(), "label_key": options.label_key, "model": mdl.name,
        "random_init": mdl.random_init, "settings": s.to_dict(),
    }  # fmt: skip
    ckpt = EpochCheckpoint(out, fingerprint, resume=resume, overwrite=overwrite)
    load = os.getloadavg()[0]
    with torch.random.fork_rng(devices=[mdl.device] if mdl.device.type == "cuda" else []):
        torch.manual_seed(s.seed)
        clf = CellClassifier.from_model(mdl, labels.classes, s.seed, s.dropout)
        clf.freeze(s.freeze_layers)
        trainer = Trainer(
            clf, cells.subset(split.train), cells.subset(split.val), s,
            batch_tokens=_batch_tokens(s, mdl.device), progress=progress,
        )  # fmt: skip
        history, best, stopped, resumed = _train(trainer, ckpt, tracker)
    t0 = time.perf_counter()
    clf.load_state_dict(best["model"])
    metrics = _metrics(trainer, cells.subset(split.test), history, best, stopped)
    # every epoch's time, those before a resume included, and the final scoring
    seconds = sum(e["seconds"] for e in history) + time.perf_counter() - t0
    metrics.update(_provenance(mdl, s, options, split, cells, seconds, load))
    metrics["resumed_after_epoch"] = resumed
    with replacing(out, folder=True) as tmp:
        clf.save_pretrained(tmp)
        write_outputs(tmp, metrics, _split_table(split, cells, src.obs_names, labels.classes))
    ckpt.remove()
    return metrics


def _model(model, vocab: Vocab, device: str, random_init: bool, seed: int) -> GeneformerModel:
    if isinstance(model, GeneformerModel):
        model.check_vocab(vocab)
        return model
    return load_model(model, vocab=vocab, device=device, random_init=random_init, seed=seed)


def _resolve(s: TrainSettings, mdl: GeneformerModel) -> TrainSettings:
    """Settings checked against the model, ``precision auto`` made concrete for its device."""
    if s.freeze_layers > mdl.config.n_layers:
        raise IspoError(
            f"--freeze-layers {s.freeze_layers} exceeds the model's {mdl.config.n_layers} "
            "layers: freeze fewer"
        )
    if s.precision != Precision.AUTO:
        return s
    chosen, why = auto_precision(mdl.device)
    log.info("precision auto -> %s", why)
    return s.replace(precision=chosen)


def _batch_tokens(s: TrainSettings, device: torch.device) -> int:
    """The training token budget: the settings', or the device default (on a CPU, 8k tokens
    keep a batch near the cache while the matmuls stay large; on a GPU, 64k)."""
    if s.batch_tokens is not None:
        return s.batch_tokens
    return GPU_BATCH_TOKENS if device.type == "cuda" else CPU_BATCH_TOKENS


def _train(
    trainer: Trainer, ckpt: EpochCheckpoint, tracker: Tracker | None
) -> tuple[list[dict], dict, bool, int | None]:
    """Every epoch not yet done, each checkpointed; early stopping on validation macro-F1
    (ties: lower validation loss). The history, the best epoch's weights, whether the run
    stopped early, and the epoch it resumed after (None: it did not)."""
    s, state = trainer.s, ckpt.load()
    history: list[dict] = []
    best: dict = {"epoch": 0, "key": (-1.0, 0.0), "model": None}
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        history, best = state["history"], state["best"]
    resumed = len(history) if state is not None else None
    for epoch in range(len(history) + 1, s.epochs + 1):
        if _patience_spent(history, best, s.patience):
            return history, best, True, resumed
        m: EpochMetrics = trainer.epoch(epoch)
        history.append(m.to_dict())
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in m.to_dict().items()})
        if tracker is not None:
            tracker.log({f"finetune/{k}": v for k, v in m.to_dict().items()}, step=epoch)
        key = selection_key(m.to_dict())
        if key > tuple(best["key"]):
            model = {k: v.detach().clone() for k, v in trainer.clf.state_dict().items()}
            best = {"epoch": epoch, "key": key, "model": model}
        ckpt.save({"epoch": epoch, "trainer": trainer.state_dict(), "history": history,
                   "best": best})  # fmt: skip
    return history, best, False, resumed


def _patience_spent(history: list[dict], best: dict, patience: int | None) -> bool:
    return patience is not None and len(history) - best["epoch"] >= patience


def _metrics(
    trainer: Trainer, test: LabelledCells, history: list[dict], best: dict, stopped: bool
) -> dict:
    """Scores of the best weights: validation (with its confusion matrix) and test."""
    n = len(trainer.clf.classes)
    val = trainer.evaluate(trainer.val_cells)
    out = {
        "classes": trainer.clf.classes,
        "epochs": history,
        "best_epoch": best["epoch"],
        "stopped_early": stopped,
        "validation": {"loss": val.loss, "accuracy": val.accuracy, "macro_f1": val.macro_f1},
        "confusion_matrix": confusion(trainer.val_cells.y, val.predicted, n),
        "test": None,
        "batch_tokens": trainer.batch_tokens,
    }
    if len(test):
        t = trainer.evaluate(test)
        out["test"] = {
            "loss": t.loss, "accuracy": t.accuracy, "macro_f1": t.macro_f1,
            "confusion_matrix": confusion(test.y, t.predicted, n),
        }  # fmt: skip
    return out


def _provenance(
    mdl: GeneformerModel, s: TrainSettings, options: DataOptions, split: Split,
    cells: LabelledCells, seconds: float, load_start: float,
) -> dict:  # fmt: skip
    """How the run was made: settings, model, split sizes per class, device, versions, load."""
    classes = list(range(int(cells.y.max()) + 1))
    sizes = {
        part: np.bincount(cells.y[getattr(split, part)], minlength=len(classes)).tolist()
        for part in ("train", "val", "test")
    }
    return {
        "label_key": options.label_key,
        "settings": s.to_dict(),
        "random_init": mdl.random_init,
        "model": mdl.name,
        "model_metadata": mdl.metadata(),
        "split": {"seed": s.seed, "cells_per_class": sizes, "file": "split.csv"},
        "device": device_name(mdl.device),
        "threads": torch.get_num_threads(),
        "load_average": {"start": load_start, "end": os.getloadavg()[0]},
        "seconds": seconds,
        "versions": versions(),
        "commit": git_commit(),
    }


def _split_table(
    split: Split, cells: LabelledCells, obs_names: pd.Index, classes: list[str]
) -> pd.DataFrame:
    """One row per cell: its name, label and part (train, val or test)."""
    parts = [(p, getattr(split, p)) for p in ("train", "val", "test")]
    rows = np.concatenate([idx for _, idx in parts])
    return pd.DataFrame(
        {
            "cell": obs_names[cells.cells.obs_index[rows]].astype(str),
            "label": np.asarray(classes, dtype=object)[cells.y[rows]],
            "part": np.repeat([p for p, _ in parts], [len(i) for _, i in parts]),
        }
    )
