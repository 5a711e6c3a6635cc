"""How good is a cell embedding, and do two embeddings of the same cells agree?

:func:`evaluate_embedding` scores an embedding against known labels (condition, cell type,
perturbation...) the way single-cell integration benchmarks do, so a user can tell whether the
model's representation carries the biology they care about. :func:`embedding_consistency` compares
two embeddings of the same cells (fp32 vs bf16, batched vs unbatched, ispo vs a reference
implementation) to show that a faster path did not change the answer.

Both return plain nested dicts of Python floats, ints, strings and lists so the result can be
written with :func:`json.dump` as-is. Where a metric has an established name in scib
(Luecken et al. 2022, *Benchmarking atlas-level data integration*), the docstring gives it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.linear_model import RidgeClassifier
from sklearn.metrics import (
    accuracy_score,
    adjusted_rand_score,
    calinski_harabasz_score,
    confusion_matrix,
    davies_bouldin_score,
    f1_score,
    normalized_mutual_info_score,
    pairwise_distances,
    silhouette_score,
)
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from ispo.errors import IspoError
from ispo.runtime.pool import rowwise_cosine

#: Silhouette is O(n^2); above this many cells it is computed on a seeded random subsample.
SILHOUETTE_MAX_CELLS = 5000
#: Mean pairwise distances are O(n^2) in memory; they use at most this many cells.
PAIRWISE_MAX_CELLS = 2000


def evaluate_embedding(
    X: np.ndarray,
    labels: Sequence,
    *,
    control_label: str | None = None,
    k: int = 10,
    test_size: float = 0.2,
    seed: int = 0,
) -> dict:
    """Score how well an embedding separates known labels.

    Two complementary views are reported because neither alone is convincing: a linear probe
    says whether the label is *decodable* from the embedding, the geometry metrics say whether
    cells with the same label actually *sit together* (which is what clustering, kNN label
    transfer and UMAP plots rely on).

    Parameters
    ----------
    X
        Embedding, shape ``(n_cells, dim)``. Rows containing NaN or infinity (e.g. cells with no
        expressed vocabulary gene) are dropped first and counted in ``n_dropped_nan``.
    labels
        One label per row of ``X`` (any values; compared as strings).
    control_label
        Label of the unperturbed / control cells. When given, ``geometry.control_separation``
        measures how far the other cells moved away from the controls.
    k
        Neighbours per cell for ``knn_label_consistency`` (lowered to ``n_cells - 1`` if needed).
    test_size
        Fraction of cells held out for the linear probe (stratified by label).
    seed
        Seeds the train/test split, KMeans and every subsample, so repeated calls are identical.

    Returns
    -------
    dict
        ``n_cells`` (after dropping), ``n_dropped_nan``, ``n_labels``, ``embedding_dim``, and:

        ``classification``
            Ridge classifier on standardised features, trained on the stratified split:
            ``accuracy``, ``f1_weighted``, ``f1_macro``, ``classes`` (sorted label strings),
            ``n_train``, ``n_test``, ``confusion_matrix`` (rows = true label, columns =
            predicted, both in ``classes`` order).
        ``geometry``
            ``silhouette`` (scib ``ASW_label`` before its (x+1)/2 rescaling; in [-1, 1]),
            ``separation_ratio`` (mean distance between cells of different labels / mean
            distance between distinct cells of the same label; > 1 means labels separate),
            ``knn_label_consistency`` (mean fraction of each cell's ``k`` nearest other cells
            sharing its label), ``ari`` and ``nmi`` (scib ``ARI_cluster/label`` and
            ``NMI_cluster/label``, KMeans with one cluster per label), ``davies_bouldin``
            (lower is better), ``calinski_harabasz`` (higher is better), and
            ``control_separation`` (mean control-to-other distance / mean control-to-control
            distance; ``None`` without ``control_label``). Ratios that would divide by zero are
            ``None`` so the dict stays strict JSON.

    Raises
    ------
    IspoError
        If ``X`` is not 2-D, ``X`` and ``labels`` differ in length, a label is missing, fewer
        than 2 labels or a label with fewer than 2 cells remain, ``control_label`` is not a
        label, or ``k`` / ``test_size`` is out of range.
    """
    X, y, classes, n_dropped = _checked(X, labels, control_label, k, test_size)

    rng = np.random.default_rng(seed)
    return {
        "n_cells": int(X.shape[0]),
        "n_dropped_nan": n_dropped,
        "n_labels": len(classes),
        "embedding_dim": int(X.shape[1]),
        "classification": _classification(X, y, classes, test_size=test_size, seed=seed),
        "geometry": _geometry(X, y, classes, control_label=control_label, k=k, seed=seed, rng=rng),
    }


def _checked(
    X: np.ndarray, labels: Sequence, control_label: str | None, k: int, test_size: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The finite rows of ``X``, their labels as strings, the sorted classes and how many rows
    were dropped; every input :func:`evaluate_embedding` cannot score is refused here, with
    the fix, before any model is fitted."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise IspoError(
            f"embedding must be 2-D (cells x dims), got shape {X.shape}; pass one row per cell"
        )
    labels_raw = pd.Series(list(labels), dtype=object)
    if len(labels_raw) != X.shape[0]:
        raise IspoError(
            f"embedding has {X.shape[0]} rows but {len(labels_raw)} labels were given; "
            "pass exactly one label per embedded cell, in the same order"
        )
    if labels_raw.isna().any():
        raise IspoError(
            f"{int(labels_raw.isna().sum())} cells have a missing label; "
            "fill them or drop those cells before evaluating"
        )
    if k < 1:
        raise IspoError(f"k must be at least 1, got {k}")
    if not 0.0 < test_size < 1.0:
        raise IspoError(f"test_size must be between 0 and 1 (exclusive), got {test_size}")
    finite = np.isfinite(X).all(axis=1)
    n_dropped = int((~finite).sum())
    X = X[finite]
    y = labels_raw.astype(str).to_numpy()[finite]

    classes, counts = np.unique(y, return_counts=True)
    dropped_note = f" after dropping {n_dropped} NaN rows" if n_dropped else ""
    if len(classes) < 2:
        raise IspoError(
            f"need at least 2 distinct labels to evaluate an embedding, got {len(classes)} "
            f"({', '.join(map(repr, classes)) or 'no cells'}){dropped_note}; "
            "pass a label column that varies across cells"
        )
    too_small = [f"{c!r} ({n})" for c, n in zip(classes, counts) if n < 2]
    if too_small:
        shown = ", ".join(too_small[:10]) + (", ..." if len(too_small) > 10 else "")
        raise IspoError(
            f"every label needs at least 2 cells{dropped_note}, these have fewer: {shown}; "
            "drop or merge those labels"
        )
    if control_label is not None and str(control_label) not in classes:
        raise IspoError(
            f"control label {control_label!r} is not among the labels "
            f"({', '.join(map(repr, classes[:10]))}{', ...' if len(classes) > 10 else ''}); "
            "pass one of them or leave control_label unset"
        )
    return X, y, classes, n_dropped


def embedding_consistency(X: np.ndarray, Y: np.ndarray, *, k: int = 10) -> dict:
    """Compare two embeddings of the same cells, row by row and neighbourhood by neighbourhood.

    Per-cell cosine similarity catches any cell whose vector changed direction (the low
    percentiles show a few bad cells that a mean would hide); ``knn_overlap`` checks what
    downstream analysis actually consumes, the neighbourhood graph, which can survive small
    numeric differences or be broken by them.

    Parameters
    ----------
    X, Y
        Embeddings of the same cells in the same order, shape ``(n_cells, dim)``.
    k
        Neighbours per cell for ``knn_overlap`` (lowered to ``n_cells - 1`` if needed).

    Returns
    -------
    dict
        ``cosine_min``, ``cosine_mean``, ``cosine_p01``, ``cosine_p05``, ``cosine_p50``
        (per-cell cosine similarity between matching rows; two all-zero rows count as 1),
        ``max_abs_diff`` (largest element-wise absolute difference) and ``knn_overlap`` (mean
        over cells of the fraction of the cell's ``k`` Euclidean nearest neighbours in ``X``
        that are also among its ``k`` nearest neighbours in ``Y``; 1 means identical graphs).

    Raises
    ------
    IspoError
        If the shapes differ or are not 2-D, fewer than 2 cells are given, either embedding
        contains NaN or infinity, or ``k`` is below 1.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.shape != Y.shape or X.ndim != 2:
        raise IspoError(
            f"embeddings to compare must have the same 2-D shape, got {X.shape} and {Y.shape}; "
            "embed the same cells with the same model dimension"
        )
    if X.shape[0] < 2:
        raise IspoError(f"need at least 2 cells to compare embeddings, got {X.shape[0]}")
    for name, E in (("first", X), ("second", Y)):
        bad = int((~np.isfinite(E).all(axis=1)).sum())
        if bad:
            raise IspoError(
                f"the {name} embedding has {bad} rows with NaN or infinity; "
                "drop those cells from both embeddings before comparing"
            )
    if k < 1:
        raise IspoError(f"k must be at least 1, got {k}")

    cos = rowwise_cosine(X, Y)
    k = min(k, X.shape[0] - 1)
    nx = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(return_distance=False)
    ny = NearestNeighbors(n_neighbors=k).fit(Y).kneighbors(return_distance=False)
    shared = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(nx, ny)]
    return {
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "cosine_p01": float(np.percentile(cos, 1)),
        "cosine_p05": float(np.percentile(cos, 5)),
        "cosine_p50": float(np.percentile(cos, 50)),
        "max_abs_diff": float(np.abs(X - Y).max()),
        "knn_overlap": float(np.mean(shared) / k),
    }


def _classification(
    X: np.ndarray, y: np.ndarray, classes: np.ndarray, *, test_size: float, seed: int
) -> dict:
    """Linear probe: standardise on the training cells, fit a ridge classifier, score the rest.

    A linear model is used on purpose: it asks whether the label is linearly readable from the
    embedding, not whether a flexible model can memorise it.
    """
    n = len(y)
    # Stratification needs at least one test and one training cell per label; every label has
    # >= 2 cells, so rounding the test set up to n_labels always leaves enough for training.
    n_test = max(math.ceil(test_size * n), len(classes))
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=n_test, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(X_tr)
    pred = RidgeClassifier().fit(scaler.transform(X_tr), y_tr).predict(scaler.transform(X_te))
    return {
        "accuracy": float(accuracy_score(y_te, pred)),
        "f1_weighted": float(
            f1_score(y_te, pred, average="weighted", labels=classes, zero_division=0)
        ),
        "f1_macro": float(f1_score(y_te, pred, average="macro", labels=classes, zero_division=0)),
        "classes": [str(c) for c in classes],
        "n_train": len(y_tr),
        "n_test": len(y_te),
        "confusion_matrix": confusion_matrix(y_te, pred, labels=classes).tolist(),
    }


def _geometry(
    X: np.ndarray,
    y: np.ndarray,
    classes: np.ndarray,
    *,
    control_label: str | None,
    k: int,
    seed: int,
    rng: np.random.Generator,
) -> dict:
    """Label-aware geometry of the embedding (Euclidean throughout)."""
    n = len(y)
    silhouette = silhouette_score(
        X,
        y,
        metric="euclidean",
        sample_size=SILHOUETTE_MAX_CELLS if n > SILHOUETTE_MAX_CELLS else None,
        random_state=seed,
    )

    sub = _subsample(n, PAIRWISE_MAX_CELLS, rng)
    D = pairwise_distances(X[sub])
    same = y[sub][:, None] == y[sub][None, :]
    off_diagonal = ~np.eye(len(sub), dtype=bool)
    separation = _ratio(D[~same].mean(), D[same & off_diagonal].mean())

    k_eff = min(k, n - 1)
    neighbours = NearestNeighbors(n_neighbors=k_eff).fit(X).kneighbors(return_distance=False)
    knn_consistency = float((y[neighbours] == y[:, None]).mean())

    clusters = KMeans(n_clusters=len(classes), random_state=seed, n_init=10).fit_predict(X)

    control_separation = None
    if control_label is not None:
        is_control = y == str(control_label)
        control = X[np.flatnonzero(is_control)[_subsample(int(is_control.sum()), 1000, rng)]]
        others = X[np.flatnonzero(~is_control)[_subsample(int((~is_control).sum()), 1000, rng)]]
        within = pairwise_distances(control)
        within_mean = within[~np.eye(len(control), dtype=bool)].mean()
        control_separation = _ratio(pairwise_distances(control, others).mean(), within_mean)

    return {
        "silhouette": float(silhouette),
        "separation_ratio": separation,
        "knn_label_consistency": knn_consistency,
        "ari": float(adjusted_rand_score(y, clusters)),
        "nmi": float(normalized_mutual_info_score(y, clusters)),
        "davies_bouldin": float(davies_bouldin_score(X, y)),
        "calinski_harabasz": float(calinski_harabasz_score(X, y)),
        "control_separation": control_separation,
    }


def _subsample(n: int, at_most: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``range(n)`` of size ``min(n, at_most)``."""
    if n <= at_most:
        return np.arange(n)
    return np.sort(rng.choice(n, size=at_most, replace=False))


def _ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or ``None`` when undefined (keeps the result strict JSON)."""
    if denominator <= 0 or not np.isfinite(numerator):
        return None
    return float(numerator / denominator)
