"""What the tokens allow a simple model: logistic regression on each cell's rank-value tokens,
on the train / validation / test cells of a fine-tuning run.

    python benchmarks/kang_linear_baseline.py RUN_FOLDER [--data H5AD] [--vocab DIR] [--out DIR]

RUN_FOLDER is an ``ispo finetune`` output on Kang (its ``split.csv`` names each cell's part).
Each cell becomes a bag of its genes weighted by rank (1 / log2(rank + 2), as in DCG: the top
genes count most), the same tokens the fine-tuned model reads (V1 dictionaries, Geneformer's
2,048-token cut). scikit-learn's L2 logistic regression (C = 1) is fit on the training cells;
macro-F1 on the validation and test cells is the reference a fine-tuned classifier is read
against. ``--data`` and ``--vocab`` default to ``../shared/data`` beside the checkout (pass the
run's own). Writes ``linear_baseline.json`` to ``--out`` (default: RUN_FOLDER).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

import ispo
from ispo.io.read import open_input
from ispo.provenance import git_commit, versions

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def rank_bags(token_lists: list[list[int]]) -> sp.csr_matrix:
    """(cells, vocabulary) matrix: 1 / log2(rank + 2) at each of a cell's tokens."""
    rows = np.repeat(np.arange(len(token_lists)), [len(t) for t in token_lists])
    cols = np.concatenate([np.asarray(t) for t in token_lists])
    ranks = np.concatenate([np.arange(len(t)) for t in token_lists])
    return sp.csr_matrix((1.0 / np.log2(ranks + 2.0), (rows, cols)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="an ispo finetune output folder (split.csv)")
    p.add_argument("--data", type=Path, default=SHARED / "kang2018_pbmc_ifnb_2000.h5ad")
    p.add_argument("--vocab", type=Path, default=SHARED / "geneformer-v1")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    split = pd.read_csv(args.run / "split.csv").set_index("cell")
    src = open_input(args.data)
    cells = ispo.tokenize(src, args.vocab)
    names = np.asarray(src.obs_names)[cells.obs_index]
    X, part = rank_bags(cells.to_lists()), split.loc[names, "part"].to_numpy()
    y = split.loc[names, "label"].to_numpy()
    fit = LogisticRegression(C=1.0, max_iter=5000).fit(X[part == "train"], y[part == "train"])
    scores = {
        name: float(f1_score(y[part == name], fit.predict(X[part == name]), average="macro"))
        for name in ("train", "val", "test")
    }
    out = {
        "model": "logistic regression (L2, C=1) on rank-weighted token bags",
        "macro_f1": scores,
        "cells": {k: int((part == k).sum()) for k in ("train", "val", "test")},
        "split": str(args.run / "split.csv"),
        "versions": versions(),
        "commit": git_commit(),
    }
    folder = args.out or args.run
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "linear_baseline.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out["macro_f1"]))


if __name__ == "__main__":
    main()
