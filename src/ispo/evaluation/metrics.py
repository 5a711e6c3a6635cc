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
from dataclasses import dataclass, field

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
    silhouette_samples,
)
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from ispo.errors import IspoError
from ispo.runtime.pool import rowwise_cosine

#: Silhouette is O(n^2); above this many cells it is computed on a seeded random subsample.
SILHOUETTE_MAX_CELLS = 5000
#: Mean pairwise distances are O(n^2) in memory; they use at most this many cells.
PAIRWISE_MAX_CELLS = 2000
#: Control separation: at most this many control cells and this many other cells.
CONTROL_MAX_CELLS = 1000
#: kNN metrics find the exact neighbours (among all cells) of at most this many query cells:
#: O(queries x n x dim) instead of O(n^2 x dim).
KNN_MAX_QUERIES = 5000
#: k-means (ARI, NMI) runs on at most this many cells.
KMEANS_MAX_CELLS = 20000


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
        Fraction of each label's cells held out for the linear probe (rounded; at least one
        test and one training cell per label, so every label is scored).
    seed
        Seeds the train/test split, KMeans and every subsample, so repeated calls are identical.

    Returns
    -------
    dict
        ``n_cells`` (after dropping), ``n_dropped_nan``, ``n_labels``, ``embedding_dim``, and:

        ``classification``
            Ridge classifier on standardised features, trained on the split: ``accuracy``,
            ``f1_weighted``, ``f1_macro`` (every label has test cells, so each counts),
            ``classes`` (sorted label strings), ``n_train``, ``n_test``,
            ``confusion_matrix`` (rows = true label, columns = predicted, both in ``classes``
            order).
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
            ``None`` so the dict stays strict JSON. These pool cells: a large label dominates.
        ``per_label``
            One row per label (``classes`` order): ``label``, ``n_cells``, ``n_test``, ``f1``,
            ``silhouette`` (mean over the label's cells in the silhouette sample; None if none
            was drawn) and ``knn_label_consistency`` (over the label's query cells): a label
            that does not separate shows here even when the pooled figures look good.
        ``subsamples``
            Every metric that runs on a seeded subsample: ``metric``, ``n_cells`` used, ``of``
            (cells available), ``cap`` and ``seed`` (``numpy.random.default_rng(seed)``).

    Raises
    ------
    IspoError
        If ``X`` is not 2-D, ``X`` and ``labels`` differ in length, a label is missing, fewer
        than 2 labels or a label with fewer than 2 cells remain, ``control_label`` is not a
        label, or ``k`` / ``test_size`` is out of range.
    """
    X, y, classes, n_dropped = _checked(X, labels, control_label, k, test_size)
    samples = Subsamples(seed)
    classification = _classification(X, y, classes, test_size=test_size, seed=seed)
    geometry, per_label = _geometry(
        X, y, classes, control_label=control_label, k=k, samples=samples
    )
    return {
        "n_cells": int(X.shape[0]),
        "n_dropped_nan": n_dropped,
        "n_labels": len(classes),
        "embedding_dim": int(X.shape[1]),
        "classification": classification,
        "geometry": geometry,
        "per_label": [
            {
                "label": str(c),
                "n_cells": int((y == c).sum()),
                "n_test": classification["n_test_per_label"][i],
                "f1": classification["f1_per_label"][i],
                **per_label[i],
            }
            for i, c in enumerate(classes)
        ],
        "subsamples": samples.records,
    }


@dataclass
class Subsamples:
    """Seeded random subsets of cells, each recorded (metric, cells used, of, cap, seed) so that
    results say what they were computed on."""

    seed: int
    records: list[dict] = field(default_factory=list)

    def take(self, metric: str, n: int, cap: int) -> np.ndarray:
        """Sorted indices of ``min(n, cap)`` of ``range(n)`` (all of them when ``n <= cap``)."""
        idx = np.arange(n)
        if n > cap:
            idx = np.sort(np.random.default_rng(self.seed).choice(n, size=cap, replace=False))
        self.records.append(
            {"metric": metric, "n_cells": len(idx), "of": n, "cap": cap, "seed": self.seed}
        )
        return idx


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


def embedding_consistency(X: np.ndarray, Y: np.ndarray, *, k: int = 10, seed: int = 0) -> dict:
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
    seed
        Seeds the query cells of ``knn_overlap`` when there are more than
        ``KNN_MAX_QUERIES`` cells (their neighbours are searched among all cells).

    Returns
    -------
    dict
        ``cosine_min``, ``cosine_mean``, ``cosine_p01``, ``cosine_p05``, ``cosine_p50``
        (per-cell cosine similarity between matching rows; two all-zero rows count as 1),
        ``max_abs_diff`` (largest element-wise absolute difference) and ``knn_overlap`` (mean
        over cells of the fraction of the cell's ``k`` Euclidean nearest neighbours in ``X``
        that are also among its ``k`` nearest neighbours in ``Y``; 1 means identical graphs),
        and ``subsamples`` (the query cells of ``knn_overlap``, as in
        :func:`evaluate_embedding`).

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
    samples = Subsamples(seed)
    queries = samples.take("knn_overlap", X.shape[0], KNN_MAX_QUERIES)
    nx, ny = nearest_others(X, queries, k), nearest_others(Y, queries, k)
    shared = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(nx, ny)]
    return {
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "cosine_p01": float(np.percentile(cos, 1)),
        "cosine_p05": float(np.percentile(cos, 5)),
        "cosine_p50": float(np.percentile(cos, 50)),
        "max_abs_diff": float(np.abs(X - Y).max()),
        "knn_overlap": float(np.mean(shared) / k),
        "subsamples": samples.records,
    }


def _classification(
    X: np.ndarray, y: np.ndarray, classes: np.ndarray, *, test_size: float, seed: int
) -> dict:
    """Linear probe: standardise on the training cells, fit a ridge classifier, score the rest.

    A linear model is used on purpose: it asks whether the label is linearly readable from the
    embedding, not whether a flexible model can memorise it.
    """
    train, test = split(y, classes, test_size, seed)
    scaler = StandardScaler().fit(X[train])
    ridge = RidgeClassifier().fit(scaler.transform(X[train]), y[train])
    pred, y_te = ridge.predict(scaler.transform(X[test])), y[test]
    f1 = f1_score(y_te, pred, labels=classes, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_te, pred)),
        "f1_weighted": float(
            f1_score(y_te, pred, average="weighted", labels=classes, zero_division=0)
        ),
        "f1_macro": float(f1.mean()),
        "classes": [str(c) for c in classes],
        "n_train": len(train),
        "n_test": len(test),
        "f1_per_label": [float(v) for v in f1],
        "n_test_per_label": [int((y_te == c).sum()) for c in classes],
        "confusion_matrix": confusion_matrix(y_te, pred, labels=classes).tolist(),
    }


def split(
    y: np.ndarray, classes: np.ndarray, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices, stratified by label: each label puts ``test_size`` of its
    cells (rounded half up) in the test set, but at least one and never all of them, so every
    label is both learnt and scored (a rare label would otherwise miss the test set and count
    as F1 0 in the macro mean). Seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    test = []
    for c in classes:
        members = np.flatnonzero(y == c)
        n_test = min(len(members) - 1, max(1, math.floor(test_size * len(members) + 0.5)))
        test.append(rng.choice(members, size=n_test, replace=False))
    is_test = np.zeros(len(y), dtype=bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _geometry(
    X: np.ndarray,
    y: np.ndarray,
    classes: np.ndarray,
    *,
    control_label: str | None,
    k: int,
    samples: Subsamples,
) -> tuple[dict, list[dict]]:
    """Label-aware geometry of the embedding (Euclidean throughout), pooled over cells, and
    silhouette and kNN label consistency per label."""
    n = len(y)
    silhouette, per_silhouette = _silhouette(X, y, classes, samples)

    sub = samples.take("separation_ratio", n, PAIRWISE_MAX_CELLS)
    D = pairwise_distances(X[sub])
    same = y[sub][:, None] == y[sub][None, :]
    off_diagonal = ~np.eye(len(sub), dtype=bool)
    separation = _ratio(D[~same].mean(), D[same & off_diagonal].mean())

    queries = samples.take("knn_label_consistency", n, KNN_MAX_QUERIES)
    neighbours = nearest_others(X, queries, min(k, n - 1))
    hits = (y[neighbours] == y[queries][:, None]).mean(axis=1)

    fit = samples.take("ari, nmi (k-means)", n, KMEANS_MAX_CELLS)
    clusters = KMeans(n_clusters=len(classes), random_state=samples.seed, n_init=10).fit_predict(
        X[fit]
    )
    geometry = {
        "silhouette": silhouette,
        "separation_ratio": separation,
        "knn_label_consistency": float(hits.mean()),
        "ari": float(adjusted_rand_score(y[fit], clusters)),
        "nmi": float(normalized_mutual_info_score(y[fit], clusters)),
        "davies_bouldin": float(davies_bouldin_score(X, y)),
        "calinski_harabasz": float(calinski_harabasz_score(X, y)),
        "control_separation": _control_separation(X, y, control_label, samples),
    }
    per_label = [
        {
            "silhouette": per_silhouette[i],
            "knn_label_consistency": _mean_or_none(hits[y[queries] == c]),
        }
        for i, c in enumerate(classes)
    ]
    return geometry, per_label


def _silhouette(
    X: np.ndarray, y: np.ndarray, classes: np.ndarray, samples: Subsamples
) -> tuple[float | None, list[float | None]]:
    """Silhouette over a seeded subsample: pooled (scib's ASW_label before rescaling) and per
    label; None where the sample holds fewer than 2 labels (or none of a label)."""
    sub = samples.take("silhouette", len(y), SILHOUETTE_MAX_CELLS)
    ys = y[sub]
    if len(np.unique(ys)) < 2:
        return None, [None] * len(classes)
    s = silhouette_samples(X[sub], ys, metric="euclidean")
    return float(s.mean()), [_mean_or_none(s[ys == c]) for c in classes]


def _control_separation(
    X: np.ndarray, y: np.ndarray, control_label: str | None, samples: Subsamples
) -> float | None:
    """Mean control-to-other distance over mean control-to-control distance (None without a
    control label)."""
    if control_label is None:
        return None
    is_control = y == str(control_label)
    ctrl, other = np.flatnonzero(is_control), np.flatnonzero(~is_control)
    control = X[ctrl[samples.take("control_separation (controls)", len(ctrl), CONTROL_MAX_CELLS)]]
    others = X[other[samples.take("control_separation (others)", len(other), CONTROL_MAX_CELLS)]]
    within = pairwise_distances(control)
    within_mean = within[~np.eye(len(control), dtype=bool)].mean()
    return _ratio(pairwise_distances(control, others).mean(), within_mean)


def nearest_others(X: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """``(len(queries), k)`` indices of each query cell's ``k`` nearest other cells among all
    rows of ``X`` (exact, Euclidean; the cell itself excluded even when it has duplicates)."""
    found = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X[queries], return_distance=False)
    out = np.empty((len(queries), k), dtype=np.int64)
    for row, (q, got) in enumerate(zip(queries, found)):
        others = got[got != q]
        out[row] = others[:k]
    return out


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def _ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or ``None`` when undefined (keeps the result strict JSON)."""
    if denominator <= 0 or not np.isfinite(numerator):
        return None
    return float(numerator / denominator)
