"""The labelled cells of a fine-tuning run: labels checked, cells tokenized (in memory, as embed
and perturb tokenize them), split stratified and seeded.

Labels are checked before anything is tokenized or written, one clear line per problem: a
missing label column, cells without a label, a column with a single class, a class too small to
be split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ispo.errors import IspoError
from ispo.io.read import Source
from ispo.io.vocab import Vocab
from ispo.tokens import TokenizedCells, tokenize


@dataclass(frozen=True)
class Labels:
    """Class names (id order) and each input row's class id."""

    classes: list[str]
    ids: np.ndarray  # (n_obs,) int64


def read_labels(src: Source, label_key: str) -> Labels:
    """The labels of every input row; IspoError on a missing column, NaN or a single class.

    Classes are in the column's category order when it is categorical, sorted otherwise.
    """
    if label_key not in src.obs.columns:
        cols = ", ".join(map(str, src.obs.columns[:20])) or "none"
        raise IspoError(
            f"label column {label_key!r} is not in obs of {src.name} (columns: {cols}): "
            "pass --label-key with one of them"
        )
    col = src.obs[label_key]
    missing = int(col.isna().sum())
    if missing:
        raise IspoError(
            f"{missing:,} cell(s) have no label (NaN) in obs[{label_key!r}] of {src.name}: "
            "drop them or fill the column before fine-tuning"
        )
    if isinstance(col.dtype, pd.CategoricalDtype):
        present = set(col.astype(str))
        classes = [str(c) for c in col.cat.categories if str(c) in present]
    else:
        classes = sorted(set(col.astype(str)))
    if len(classes) < 2:
        raise IspoError(
            f"obs[{label_key!r}] of {src.name} has one class ({classes[0]!r}): a classifier "
            "needs at least two; choose another --label-key"
        )
    index = {c: i for i, c in enumerate(classes)}
    return Labels(classes, col.astype(str).map(index).to_numpy(np.int64))


@dataclass
class LabelledCells:
    """Tokenized cells and their class ids, in the same order."""

    cells: TokenizedCells
    y: np.ndarray  # (n,) int64

    def subset(self, idx: np.ndarray) -> LabelledCells:
        return LabelledCells(self.cells.subset(idx), self.y[idx])

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Split:
    """Positions (into the tokenized cells) of the training, validation and test cells."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def record(self, cells: TokenizedCells, obs_names: pd.Index) -> dict[str, list[str]]:
        """Cell names of each part, for metrics.json."""
        return {
            part: [str(obs_names[i]) for i in cells.obs_index[getattr(self, part)]]
            for part in ("train", "val", "test")
        }


def labelled_cells(
    src: Source, labels: Labels, vocab: Vocab, *, layer: str | None, gene_key: str | None,
    max_input: int,
) -> LabelledCells:  # fmt: skip
    """Every passing cell's tokens with its class id (cells the tokenizer skips drop out)."""
    cells = tokenize(src, vocab, layer=layer, gene_key=gene_key, max_input=max_input)
    return LabelledCells(cells, labels.ids[cells.obs_index])


def split_cells(
    y: np.ndarray, classes: list[str], val_size: float, test_size: float, seed: int
) -> Split:
    """A stratified, seeded train / validation / test split (scikit-learn's)."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y, minlength=len(classes))
    parts = 2 + (test_size > 0)
    small = [f"{classes[i]!r} ({n})" for i, n in enumerate(counts) if n < parts]
    if small:
        raise IspoError(
            f"class(es) {', '.join(small)} have fewer cells than the {parts} parts of the "
            "split: drop them or give more cells"
        )
    pos = np.arange(len(y))
    try:
        rest, test = (
            train_test_split(pos, test_size=test_size, stratify=y, random_state=seed)
            if test_size > 0
            else (pos, pos[:0])
        )
        share = val_size / (1 - test_size)
        train, val = train_test_split(rest, test_size=share, stratify=y[rest], random_state=seed)
    except ValueError as exc:
        raise IspoError(
            f"cannot split {len(y):,} cells stratified by label ({exc}): give more cells or "
            "change --val-size / --test-size"
        ) from exc
    return Split(np.sort(train), np.sort(val), np.sort(test))
