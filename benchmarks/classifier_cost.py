"""What a cell classifier's probabilities cost an embedding run, on the same cells in one run.

    python benchmarks/classifier_cost.py [--n-cells 100] [--repeats 3] [--out runs/clf-cost]

A ``BertForSequenceClassification`` of gf-6L's shapes (random weights, 2 classes, saved by
transformers in a temporary folder) embeds the first N Kang cells (``../shared/data``, V1
dictionaries) at Geneformer's default layer (``emb_layer=-1``: 5 of 6 layers), three ways,
interleaved ``--repeats`` times:

- ``no_probs``: the model without its classifier (``--no-probs``): the encoder stops at layer 5;
- ``probs``: with the classifier: the same pass plus the tail (layer 6 for the first token only,
  then the head; :mod:`ispo.model.tail`);
- ``full_pass``: the 6-layer encoder alone, what a second pass for the logits would add on top
  of ``no_probs`` if the classifier were read by running the encoder again.

Reports the median seconds of each and ``probs / no_probs`` against
``(no_probs + full_pass) / no_probs``. Random weights: timing only. Saves ``results.json`` with
the device, CPU, versions, commit and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def save_classifier(path: Path) -> Path:
    """gf-6L's shapes as a random 2-class sequence classifier, saved by transformers."""
    import torch
    from transformers import BertForSequenceClassification

    from ispo.model.presets import preset

    cfg = preset("gf-6L-10M-i2048").to_hf()
    cfg.id2label, cfg.label2id = {0: "ctrl", 1: "stim"}, {"ctrl": 0, "stim": 1}
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).eval().save_pretrained(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/clf-cost"))
    args = ap.parse_args()
    import anndata as ad
    import numpy as np
    import torch

    import ispo
    from ispo.provenance import cpu_info, device_name, git_commit, versions

    vocab = ispo.load_vocab(SHARED / "geneformer-v1")
    adata = ad.read_h5ad(SHARED / "kang2018_pbmc_ifnb_2000.h5ad")[: args.n_cells].copy()
    cells = ispo.tokenize(adata, vocab)
    with tempfile.TemporaryDirectory() as tmp:
        model = ispo.load_model(save_classifier(Path(tmp) / "clf"), vocab=vocab, device="cpu")
    runs = {
        "no_probs": lambda: ispo.embed_cells(cells, model.without_classifier()),
        "probs": lambda: ispo.embed_cells(cells, model, probs_out=np.empty((len(cells), 2))),
        "full_pass": lambda: ispo.embed_cells(cells, model.without_classifier(), emb_layer=0),
    }
    for fn in runs.values():  # build every encoder and tail before the clock
        fn()
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    result = {
        "what": "cell classifier cost on embedding (gf-6L shapes, random weights, emb_layer -1)",
        "n_cells": len(cells),
        "tokens": int(cells.lengths.sum()),
        "seconds": seconds,
        "median_s": med,
        "probs_over_no_probs": med["probs"] / med["no_probs"],
        "second_pass_over_no_probs": (med["no_probs"] + med["full_pass"]) / med["no_probs"],
        "device": device_name(torch.device("cpu")),
        "cpu": cpu_info(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "commit": git_commit(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("median_s", "probs_over_no_probs",
                                              "second_pass_over_no_probs")}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
