"""Evaluate the embedding stored in an AnnData: metrics, a Markdown summary and plots.

:func:`evaluate` is the user-facing layer over the pure-array functions in
:mod:`ispo.evaluation.metrics`: it picks the embedding and labels out of the AnnData, drops the
cells that were not embedded, optionally lines up a second embedding of the same cells, and
writes a result folder (``metrics.json``, ``metrics.md``, ``embedding.png``, ``confusion.png``,
``config.yaml``) that ``ispo report`` understands.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

from ispo.errors import IspoError

log = logging.getLogger(__name__)

#: Marks a result folder written by :func:`evaluate` (``ispo report`` looks for it).
METRICS_FILE = "metrics.json"
#: The embedding plot (UMAP or PCA) shows at most this many cells, a seeded subsample.
PLOT_MAX_CELLS = 50_000
RANDOM_INIT_NOTE = (
    "RANDOM WEIGHTS: this embedding comes from a model with seeded random "
    "weights; the classification and geometry figures say nothing about biology "
    "(they only show what an untrained network keeps of the input)"
)


def evaluate(
    adata: ad.AnnData,
    *,
    label_key: str,
    control_label: str | None = None,
    embedding_key: str = "X_geneformer",
    reference: ad.AnnData | np.ndarray | str | Path | None = None,
    reference_key: str | None = None,
    k: int = 10,
    test_size: float = 0.2,
    seed: int = 0,
    out: str | Path | None = None,
    overwrite: bool = False,
    run_config: dict | None = None,
) -> dict:
    """Score the embedding in ``adata.obsm[embedding_key]`` against ``adata.obs[label_key]``.

    Cells with ``obs["geneformer_embedded"] == False`` (not embedded: no vocabulary gene,
    ``filter_pass == 0``) and rows with NaN are dropped and counted.

    ``label_key``: the ``obs`` column of labels; ``control_label``: the control cells' label
    (``geometry.control_separation``); ``embedding_key``: the ``obsm`` key. ``reference``: a
    second embedding of the same cells (AnnData matched by ``obs_names``, an ``.h5ad`` path,
    or an array with one row per cell; its ``obsm`` key is ``reference_key``, default
    ``embedding_key``) adds ``consistency`` (per-cell cosine, kNN overlap). ``k``: neighbours
    for kNN label consistency and overlap; ``test_size``: the held-out fraction of the
    stratified linear probe; ``seed`` seeds the split, KMeans and subsamples. ``out``: a result
    folder to write (must not exist unless ``overwrite``), with ``run_config`` saved as its
    ``config.yaml``.

    Returns
    -------
    dict
        Strict-JSON result: ``kind`` ("evaluate"), the :func:`evaluate_embedding` fields
        (``n_cells``, ``n_dropped_nan``, ``n_labels``, ``embedding_dim``, ``classification``,
        ``geometry``, ``per_label``), ``subsamples`` (every metric computed on a seeded subset
        of cells, the consistency's kNN overlap and, with ``out``, the plotted cells; each
        with ``metric``, ``n_cells``, ``of``, ``cap``, ``seed``), ``scib`` (the metrics under
        scib's names, ``ASW_label`` rescaled to [0, 1] as scib does), ``consistency`` (or
        None), ``n_obs``, ``n_not_embedded``, ``params``, ``embedding`` (how it was made, from
        ``uns["geneformer"]``), ``random_init`` and ``warnings``.

    Raises
    ------
    IspoError
        If a key is missing, the labels or cells do not allow an evaluation, or the reference
        does not hold the same cells.
    """
    from ispo.evaluation.metrics import Subsamples, evaluate_embedding

    if out is not None:
        from ispo.io.write import check_output

        check_output(out, overwrite)
    X, labels, keep = _embedding_and_labels(adata, embedding_key, label_key)
    metrics = evaluate_embedding(
        X[keep], labels[keep], control_label=control_label, k=k, test_size=test_size, seed=seed
    )
    consistency = None
    if reference is not None:
        consistency = _consistency(
            adata, X, keep, reference, reference_key or embedding_key, k, seed
        )
    params = {
        "label_key": label_key,
        "control_label": control_label,
        "embedding_key": embedding_key,
        "k": k,
        "test_size": test_size,
        "seed": seed,
    }
    result = _result(adata, metrics, consistency, int((~keep).sum()), params)
    warnings = result["warnings"]
    for w in warnings:
        log.warning(w)
    if out is not None:
        finite = np.flatnonzero(keep & np.isfinite(X).all(axis=1))
        samples = Subsamples(seed)
        shown = finite[samples.take("embedding.png", len(finite), PLOT_MAX_CELLS)]
        result["subsamples"] += samples.records
        write_evaluation(
            result, X[shown], labels[shown], out, overwrite=overwrite, run_config=run_config
        )
    return result


def _result(
    adata: ad.AnnData, metrics: dict, consistency: dict | None, n_not_embedded: int, params: dict
) -> dict[str, Any]:
    """The strict-JSON result: the metrics, scib's names for three of them (``ASW_label``
    rescaled to [0, 1] as scib reports it), and how the embedding was made."""
    meta, random_init, warnings = _provenance(adata)
    g = metrics["geometry"]
    subsamples = metrics["subsamples"] + (consistency or {}).pop("subsamples", [])
    return {
        "kind": "evaluate",
        **metrics,
        "subsamples": subsamples,
        "scib": {
            "ASW_label": None if g["silhouette"] is None else (g["silhouette"] + 1.0) / 2.0,
            "ARI_cluster/label": g["ari"],
            "NMI_cluster/label": g["nmi"],
        },
        "consistency": consistency,
        "n_obs": int(adata.n_obs),
        "n_not_embedded": n_not_embedded,
        "params": params,
        "embedding": meta,
        "random_init": random_init,
        "warnings": warnings,
    }


def _provenance(adata: ad.AnnData) -> tuple[dict, bool | None, list[str]]:
    """How the embedding was made (``uns["geneformer"]``), whether its weights were random,
    and the warnings every output of such an embedding must carry."""
    meta = _jsonable(dict(adata.uns.get("geneformer", {}) or {}))
    random_init = meta.get("random_init")
    random_init = None if random_init is None else bool(random_init)
    warnings = [RANDOM_INIT_NOTE] if random_init else []
    if adata.uns.get("synthetic"):
        warnings.append(f"SYNTHETIC DATA: {adata.uns['synthetic']}")
    return meta, random_init, warnings


def _consistency(
    adata: ad.AnnData, X: np.ndarray, keep: np.ndarray, reference, key: str, k: int, seed: int
) -> dict:
    """Agreement with a second embedding of the same cells, over the cells both embed."""
    from ispo.evaluation.metrics import embedding_consistency

    R, ref_source = _reference_matrix(adata, reference, key)
    both = keep & np.isfinite(X).all(axis=1) & np.isfinite(R).all(axis=1)
    return {
        **embedding_consistency(X[both], R[both], k=k, seed=seed),
        "n_cells": int(both.sum()),
        "k": min(k, int(both.sum()) - 1),
        "reference": ref_source,
    }


def write_evaluation(
    result: dict,
    X: np.ndarray,
    labels: np.ndarray,
    out: str | Path,
    *,
    overwrite: bool = False,
    run_config: dict | None = None,
) -> Path:
    """Write an evaluation folder atomically: metrics.json, metrics.md, two PNGs, config.yaml."""
    from ispo.evaluation.plots import plot_confusion, plot_embedding
    from ispo.io.write import atomic_output
    from ispo.reporting.sections.evaluate import evaluation_markdown

    out = Path(out)
    with atomic_output(out, overwrite) as tmp:
        tmp.mkdir()
        (tmp / METRICS_FILE).write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
        params = result["params"]
        title = f"{params['embedding_key']} by {params['label_key']}"
        if result.get("random_init"):
            title += " [random weights]"
        plot_embedding(X, labels, tmp / "embedding.png", title=title)
        c = result["classification"]
        plot_confusion(c["confusion_matrix"], c["classes"], tmp / "confusion.png")
        images = {"embedding": "embedding.png", "confusion": "confusion.png"}
        (tmp / "metrics.md").write_text(evaluation_markdown(result, images=images))
        if run_config is not None:
            from ispo.config import save_run_config

            save_run_config(out, run_config, command="evaluate", path=tmp / "config.yaml")
    return out


def _embedding_and_labels(
    adata: ad.AnnData, embedding_key: str, label_key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embedding as float64, labels as objects, mask of cells to keep)."""
    if embedding_key not in adata.obsm:
        have = ", ".join(map(repr, adata.obsm.keys())) or "none"
        raise IspoError(
            f"no embedding obsm[{embedding_key!r}] (obsm keys: {have}): run ispo "
            "embed first or pass --embedding KEY"
        )
    if label_key not in adata.obs.columns:
        have = ", ".join(map(repr, list(adata.obs.columns)[:20])) or "none"
        raise IspoError(
            f"no label column obs[{label_key!r}] (obs columns: {have}): pass --label-key COLUMN"
        )
    X = np.asarray(adata.obsm[embedding_key])
    if X.ndim != 2 or not np.issubdtype(X.dtype, np.number):
        raise IspoError(
            f"obsm[{embedding_key!r}] is not a numeric cells x dims matrix: pass "
            "the key of an embedding"
        )
    labels = adata.obs[label_key].astype(object).to_numpy()
    keep = np.ones(adata.n_obs, dtype=bool)
    if "geneformer_embedded" in adata.obs.columns:
        keep &= adata.obs["geneformer_embedded"].astype(bool).to_numpy()
    return X.astype(np.float64), labels, keep


def _reference_matrix(
    adata: ad.AnnData, reference: ad.AnnData | np.ndarray | str | Path, key: str
) -> tuple[np.ndarray, str]:
    """The reference embedding with rows in ``adata``'s order (NaN for cells not embedded)."""
    if isinstance(reference, np.ndarray):
        R = np.asarray(reference, dtype=np.float64)
        if R.ndim != 2 or R.shape[0] != adata.n_obs:
            raise IspoError(
                f"reference embedding has shape {R.shape} but there are "
                f"{adata.n_obs} cells: pass one row per cell"
            )
        return R, "array"
    source = "AnnData"
    if isinstance(reference, (str, Path)):
        path = Path(reference)
        if not path.is_file():
            raise IspoError(f"reference {path} does not exist: pass an embedded .h5ad")
        source = str(path)
        try:
            reference = ad.read_h5ad(path, backed="r")  # counts stay on disk
        except Exception as exc:
            raise IspoError(
                f"cannot read reference {path} as .h5ad ({type(exc).__name__}): "
                "pass a file written by ispo embed"
            ) from exc
    if key not in reference.obsm:
        have = ", ".join(map(repr, reference.obsm.keys())) or "none"
        raise IspoError(
            f"reference has no obsm[{key!r}] (obsm keys: {have}): pass --reference-key KEY"
        )
    R = np.asarray(reference.obsm[key], dtype=np.float64)
    if "geneformer_embedded" in reference.obs.columns:
        R = R.copy()
        R[~reference.obs["geneformer_embedded"].astype(bool).to_numpy()] = np.nan
    names, ref_names = adata.obs_names, reference.obs_names
    if names.equals(ref_names):
        return R, source
    if not (names.is_unique and ref_names.is_unique) or not names.isin(ref_names).all():
        missing = int((~names.isin(ref_names)).sum())
        raise IspoError(
            f"reference does not hold the same cells ({missing} of {len(names)} "
            "cell names missing, or names not unique): embed the same input twice"
        )
    return R[ref_names.get_indexer(names)], source


def _jsonable(obj: Any) -> Any:
    """Plain JSON types from what h5ad gives back (numpy scalars and arrays, bytes)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, bytes):
        return obj.decode(errors="replace")
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)
