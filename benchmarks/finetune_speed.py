"""Fine-tuning speed: ispo's training loop against the usual way, same cells, same model.

    python benchmarks/finetune_speed.py [--cells 240] [--val-cells 300] [--epochs 2] [--out DIR]

The usual way is what Geneformer's ``Classifier`` runs through transformers' Trainer (its
defaults for cell classifiers): ``BertForSequenceClassification``, padded batches of 12 cells in a
new random order each epoch (the Trainer's ``RandomSampler``; the Kang file lists all ctrl cells,
then all stim, so batches in file order would hold one class), fp32, fused AdamW (the Trainer's
default optimizer; weight decay 0.001, none on biases and LayerNorms), lr 5e-5 with a linear
schedule, gradient clipping at 1.0, dropout as the config says. The Trainer itself needs
``accelerate``, which is not installed here, so the baseline is that loop written out (forward
with labels, backward, clip, step, schedule). ispo's loop is
:class:`ispo.training.loop.Trainer`: length-bucket token-budget batches (little padding), fused
q/k/v, the last layer run for the first token alone, CPU attention with dropout in fewer passes.
Both start from the same weights (a seeded random gf-6L preset and head, saved by ispo, loaded
by transformers), use the same schedule shape (warm-up: 10% of each loop's steps; Geneformer's
500 warm-up steps assume far more cells) and are scored on the same validation cells.

Epochs alternate (baseline epoch 1, ispo epoch 1, baseline epoch 2, ...) so a change in the
machine's load hits both. Reported: training cells/s by wall clock and by this process's CPU
time (less sensitive to other processes on a shared machine), their ratio, the padding each way,
and validation loss / accuracy / macro-F1 after every epoch.

Input: a seeded, class-balanced subset of the Kang 2018 PBMC cells (ctrl / stim), in file order,
V1 dictionaries. Writes ``results.json`` and ``results.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import ispo
from ispo.io.read import open_input
from ispo.provenance import device_name, git_commit, versions
from ispo.runtime.batching import fixed_batches, pad_batch
from ispo.training.classifier import CellClassifier
from ispo.training.data import LabelledCells, read_labels
from ispo.training.loop import Trainer, score
from ispo.training.settings import TrainSettings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
KANG = SHARED / "kang2018_pbmc_ifnb_2000.h5ad"
GENEFORMER_BATCH = 12


def kang_cells(n_train: int, n_val: int, seed: int) -> tuple[LabelledCells, LabelledCells, list]:
    """Class-balanced training and validation cells of Kang, each part in file order."""
    src = open_input(KANG)
    labels = read_labels(src, "condition")
    cells = ispo.tokenize(src, SHARED / "geneformer-v1")
    data = LabelledCells(cells, labels.ids[cells.obs_index])
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], []]
    for c in range(len(labels.classes)):
        pick = rng.permutation(np.flatnonzero(data.y == c))
        parts[0] += pick[: n_train // 2].tolist()
        parts[1] += pick[n_train // 2 : n_train // 2 + n_val // 2].tolist()
    return data.subset(np.sort(parts[0])), data.subset(np.sort(parts[1])), labels.classes


class HFBaseline:
    """The Trainer's loop on transformers' model, written out: batches of 12, shuffled."""

    def __init__(self, folder: Path, train: LabelledCells, s: TrainSettings) -> None:
        from transformers import BertForSequenceClassification, get_scheduler

        self.model = BertForSequenceClassification.from_pretrained(folder)
        self.train_cells, self.s = train, s
        self.plan = [  # the Trainer's RandomSampler: a new order every epoch
            [p[b] for b in fixed_batches(len(train), GENEFORMER_BATCH)]
            for p in (
                np.random.default_rng([s.seed, e]).permutation(len(train)) for e in range(s.epochs)
            )
        ]
        steps = sum(map(len, self.plan))
        decay = [p for n, p in self.model.named_parameters() if not _no_decay(n)]
        rest = [p for n, p in self.model.named_parameters() if _no_decay(n)]
        groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": rest}]
        self.opt = torch.optim.AdamW(
            groups, lr=s.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True
        )
        self.sched = get_scheduler("linear", self.opt, s.warmup_steps(steps), steps)

    def _batch(self, cells: LabelledCells, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        ids, lengths = pad_batch(cells.cells, idx, 0)
        mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
        return ids, mask

    def epoch(self, epoch: int) -> float:
        self.model.train()
        y, total = torch.from_numpy(self.train_cells.y), 0.0
        for idx in self.plan[epoch - 1]:
            ids, mask = self._batch(self.train_cells, idx)
            out = self.model(input_ids=ids, attention_mask=mask, labels=y[idx])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.max_grad_norm)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            total += float(out.loss.detach()) * len(idx)
        return total / len(self.train_cells)

    def logits(self, cells: LabelledCells) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            return torch.cat(
                [
                    self.model(*self._batch(cells, idx)).logits
                    for idx in fixed_batches(len(cells), GENEFORMER_BATCH)
                ]
            )


def _no_decay(name: str) -> bool:
    return name.endswith("bias") or "LayerNorm" in name


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def padding(cells: LabelledCells, batches: list[np.ndarray]) -> float:
    """Token slots computed (cells x their batch's longest) over real tokens."""
    lens = cells.cells.lengths
    return sum(len(b) * int(lens[b].max()) for b in batches) / float(lens.sum())


def run(args: argparse.Namespace) -> dict:
    train, val, classes = kang_cells(args.cells, args.val_cells, args.seed)
    s = TrainSettings(epochs=args.epochs, lr=5e-5, warmup=0.1, precision="fp32", seed=args.seed)
    model = ispo.load_model(args.model, random_init=True, seed=args.seed, device="cpu")
    clf = CellClassifier.from_model(model, classes, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        clf.save_pretrained(Path(tmp))  # the same starting weights for both
        hf = HFBaseline(Path(tmp), train, s)
    torch.manual_seed(args.seed)
    ours = Trainer(clf, train, val, s, batch_tokens=args.batch_tokens, progress=False)
    rows: dict[str, list[dict]] = {"transformers": [], "ispo": []}
    for epoch in range(1, args.epochs + 1):
        loss, wall, cpu = _timed(lambda e=epoch: hf.epoch(e))
        rows["transformers"].append(_row(epoch, loss, wall, cpu, score(hf.logits(val), val.y, 2)))
        loss, wall, cpu = _timed(lambda e=epoch: ours.train_epoch(e))
        rows["ispo"].append(_row(epoch, loss, wall, cpu, ours.evaluate(val)))
        print(json.dumps({k: v[-1] for k, v in rows.items()}), flush=True)
    return {
        "rows": rows,
        "n_train": len(train),
        "n_val": len(val),
        "padding": {
            "transformers": float(np.mean([padding(train, p) for p in hf.plan])),
            "ispo": float(np.mean([padding(train, p) for p in ours.plan])),
        },
        "steps_per_epoch": {"transformers": len(hf.plan[0]), "ispo": len(ours.plan[0])},
        "hf_attention": hf.model.config._attn_implementation,
        "mean_tokens": float(train.cells.lengths.mean()),
    }


def _row(epoch: int, loss: float, wall: float, cpu: float, val) -> dict:
    return {
        "epoch": epoch, "train_loss": loss, "train_seconds": wall, "train_cpu_seconds": cpu,
        "val_loss": val.loss, "val_accuracy": val.accuracy, "val_macro_f1": val.macro_f1,
    }  # fmt: skip


def summary(res: dict) -> dict:
    n = res["n_train"]
    out = {}
    for name, rows in res["rows"].items():
        out[name] = {
            "cells_per_s": n * len(rows) / sum(r["train_seconds"] for r in rows),
            "cells_per_cpu_s": n * len(rows) / sum(r["train_cpu_seconds"] for r in rows),
            "final_val_macro_f1": rows[-1]["val_macro_f1"],
        }
    t, i = out["transformers"], out["ispo"]
    out["speedup_wall"] = i["cells_per_s"] / t["cells_per_s"]
    out["speedup_cpu_time"] = i["cells_per_cpu_s"] / t["cells_per_cpu_s"]
    out["macro_f1_difference"] = i["final_val_macro_f1"] - t["final_val_macro_f1"]
    return out


def markdown(res: dict, meta: dict) -> str:
    sm = summary(res)
    lines = [
        f"# Fine-tuning speed: ispo vs transformers ({meta['model']}, random init)",
        "",
        f"{res['n_train']} Kang training cells (ctrl/stim balanced, mean "
        f"{res['mean_tokens']:.0f} tokens), {res['n_val']} validation cells, "
        f"{len(res['rows']['ispo'])} epoch(s), fp32, lr 5e-5 linear, warm-up 10% of steps.",
        "",
        "| loop | batches | padding | train cells/s (wall) | cells per CPU-s | final val "
        "macro-F1 |",
        "|---|---|---|---|---|---|",
    ]
    how = {"transformers": "12 cells, shuffled", "ispo": f"{meta['batch_tokens']:,} tokens"}
    for name in ("transformers", "ispo"):
        r = sm[name]
        lines.append(
            f"| {name} | {how[name]} ({res['steps_per_epoch'][name]} steps/epoch) | "
            f"{res['padding'][name]:.2f}x | {r['cells_per_s']:.2f} | {r['cells_per_cpu_s']:.3f} | "
            f"{r['final_val_macro_f1']:.3f} |"
        )
    lines += [
        "",
        f"**Speedup: {sm['speedup_wall']:.2f}x wall-clock, {sm['speedup_cpu_time']:.2f}x by CPU "
        f"time**; val macro-F1 difference (ispo - transformers): "
        f"{sm['macro_f1_difference']:+.3f}.",
        "",
        "| loop | epoch | train loss | val loss | val accuracy | val macro-F1 | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in res["rows"].items():
        lines += [
            f"| {name} | {r['epoch']} | {r['train_loss']:.4f} | {r['val_loss']:.4f} | "
            f"{r['val_accuracy']:.3f} | {r['val_macro_f1']:.3f} | {r['train_seconds']:.1f} |"
            for r in rows
        ]
    lines += [
        "",
        f"Device: {meta['device']}. Load average (1 min) at start / end: "
        f"{meta['load_average'][0]:.2f} / {meta['load_average'][1]:.2f} on "
        f"{meta['cpu_count']} CPUs{' (SHARED, BUSY machine)' if meta['busy'] else ''}. "
        f"transformers attention: {res['hf_attention']}. Versions: {meta['versions']}. "
        f"Commit {meta['commit']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=int, default=240, help="training cells (half per class)")
    p.add_argument("--val-cells", type=int, default=300)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--model", default="gf-6L-30M-i2048")
    p.add_argument("--batch-tokens", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/cpu-finetune-kang-gf-6L")
    args = p.parse_args(argv)
    load0, commit = os.getloadavg()[0], git_commit()  # the code that runs
    res = run(args)
    load1 = os.getloadavg()[0]
    meta = {
        "model": args.model, "batch_tokens": args.batch_tokens, "seed": args.seed,
        "device": device_name("cpu"), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average": [load0, load1],
        "busy": max(load0, load1) > (os.cpu_count() or 1),
        "versions": versions(), "commit": commit,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"summary": summary(res), **res, "meta": meta}
    (args.out / "results.json").write_text(json.dumps(out, indent=2))
    (args.out / "results.md").write_text(markdown(res, meta))
    print(markdown(res, meta))


if __name__ == "__main__":
    main()
