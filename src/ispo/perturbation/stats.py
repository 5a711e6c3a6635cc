"""Statistics over in-silico perturbation results (Geneformer's ``InSilicoPerturberStats``).

The engine writes one row per (cell, perturbation); :func:`perturb_stats` turns that into one row
per perturbed gene (or per perturbed/affected gene pair). Modes, as in Geneformer:

- ``aggregate``: mean, median and std of ``cos_sim`` (lower = stronger effect), mean
  ``cell_cos_sim`` and of each ``shift_<state>``, number of cells.
- ``goal_state_shift``: each gene's shifts toward the goal (and each alt) state against all genes'
  shifts pooled (a seeded subsample of at most ``max_background``), Wilcoxon rank-sum,
  Benjamini-Hochberg FDR.
- ``vs_null``: each gene's values against the same gene's values in a null run (rank-sum, BH).
- ``mixture_model``: a seeded Gaussian mixture on per-gene mean impact; components are ordered by
  their means here (Geneformer assumes sklearn's component 0 is the lower one; it need not be).
- ``aggregate_gene_shifts``: per (perturbed, affected) gene pair, mean/std/N of ``cos_sim`` from
  the ``emb_mode="cell_and_gene"`` gene table.

Every output carries gene ids and symbols and records how it was made in ``df.attrs["ispo_stats"]``.
The rank-sum test is computed against a sorted background with :func:`numpy.searchsorted`
(the same z and p as :func:`scipy.stats.ranksums`, without re-ranking the background per gene).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import ndtr

from ispo.errors import IspoError

Mode = Literal["aggregate", "goal_state_shift", "vs_null", "mixture_model", "aggregate_gene_shifts"]
MODES = ("aggregate", "goal_state_shift", "vs_null", "mixture_model", "aggregate_gene_shifts")
#: Geneformer's name for a mode -> ours.
MODE_ALIASES = {"aggregate_data": "aggregate"}

ID, SYMBOL = "perturbed_ids", "perturbed_symbols"
GENE_TABLE_COLUMNS = (ID, "affected_id", "affected_symbol", "cos_sim")


# ---------------------------------------------------------------------------------------------
# Primitives: rank-sum against a sorted background, Benjamini-Hochberg
# ---------------------------------------------------------------------------------------------


def ranksum_grouped(
    background: np.ndarray,
    values: np.ndarray,
    codes: np.ndarray,
    n_groups: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Wilcoxon rank-sum z and two-sided p of each group of ``values`` vs one ``background``.

    ``codes[i]`` is the group of ``values[i]``. Equal to ``scipy.stats.ranksums(group,
    background)`` per group (midranks for ties, normal approximation, no tie correction): the
    rank sum of a group in (background + group) is the sum over its values of (#background below
    + half #background equal) plus n(n+1)/2 for the ranks within the group. z > 0 means the group
    lies above the background. Groups with no values get NaN.
    """
    bg = np.sort(np.asarray(background, dtype=np.float64))
    values = np.asarray(values, dtype=np.float64)
    lo = np.searchsorted(bg, values, side="left")
    hi = np.searchsorted(bg, values, side="right")
    n1 = float(len(bg))
    n2 = np.bincount(codes, minlength=n_groups).astype(np.float64)
    s = np.bincount(codes, weights=lo + 0.5 * (hi - lo), minlength=n_groups) + n2 * (n2 + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (s - n2 * (n1 + n2 + 1) / 2) / np.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    z[(n2 == 0) | (n1 == 0)] = np.nan
    return z, 2 * ndtr(-np.abs(z))


def bh_fdr(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), in input order.

    NaN p-values stay NaN and are not counted among the tests (``m`` is the number of finite
    p-values). Same as ``scipy.stats.false_discovery_control(p, method="bh")`` without NaNs.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    q = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size == 0:
        return q
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    raw = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(np.minimum.accumulate(raw[::-1])[::-1], 1.0)
    return q


# ---------------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------------


def _read_metadata(path: Path) -> dict | None:
    """The run's metadata: the Parquet schema's ``ispo`` entry, else a JSON file beside it."""
    import pyarrow.parquet as pq

    try:
        raw = (pq.read_schema(path).metadata or {}).get(b"ispo")
        if raw:
            return json.loads(raw)
    except Exception:  # not a single Parquet file (a dataset folder...): try the JSON files
        pass
    for side in (
        path.with_suffix(".json"),
        path.with_name(path.name + ".json"),
        path.with_suffix(".meta.json"),
    ):
        if side.is_file():
            try:
                return json.loads(side.read_text())
            except json.JSONDecodeError as exc:
                raise IspoError(
                    f"metadata file {side} is not valid JSON ({exc}): rewrite it or remove it"
                ) from exc
    return None


def _load(table: pd.DataFrame | str | os.PathLike | None, what: str) -> pd.DataFrame | None:
    """A DataFrame as-is, or a Parquet file read with its run metadata in ``attrs``."""
    if table is None or isinstance(table, pd.DataFrame):
        return table
    path = Path(table)
    if not path.exists():
        raise IspoError(
            f"{what} {path} does not exist: pass the Parquet file written by ispo perturb"
        )
    try:
        df = pd.read_parquet(path)
    except Exception as exc:
        raise IspoError(
            f"cannot read {what} {path} as Parquet ({type(exc).__name__}): pass the "
            ".parquet file written by ispo perturb"
        ) from exc
    meta = _read_metadata(path)
    if meta is not None:
        df.attrs["ispo"] = meta
        if "cell_states" in meta:
            df.attrs["cell_states"] = meta["cell_states"]
    return df


def _cell_states(df: pd.DataFrame) -> dict | None:
    states = df.attrs.get("cell_states")
    if states is None and isinstance(df.attrs.get("ispo"), dict):
        states = df.attrs["ispo"].get("cell_states")
    return states if isinstance(states, dict) else None


def _require(df: pd.DataFrame, columns: Sequence[str], what: str, fix: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise IspoError(f"{what} lacks column(s) {', '.join(missing)}: {fix}")


def _shift_column(df: pd.DataFrame, state: str, what: str) -> str:
    col = f"shift_{state}"
    if col not in df.columns:
        have = sorted(c[len("shift_") :] for c in df.columns if c.startswith("shift_"))
        raise IspoError(
            f"{what} has no column {col} for state {state!r} (states present: "
            f"{', '.join(have) or 'none'}): rerun ispo perturb with cell states that "
            f"include {state!r}, or choose a state present"
        )
    return col


def _groups(df: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """(code of each row, one row per perturbation with its ids and symbols) in first-seen order."""
    codes, uniques = pd.factorize(df[ID], sort=False)
    _, first = np.unique(codes, return_index=True)  # codes are 0..k-1 in first-seen order
    genes = pd.DataFrame(
        {ID: np.asarray(uniques, dtype=object), SYMBOL: df[SYMBOL].to_numpy(dtype=object)[first]}
    )
    return codes, genes


def _finite(values: pd.Series, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = values.to_numpy(dtype=np.float64)
    ok = ~np.isnan(v)
    return v[ok], codes[ok]


def _group_mean(v: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    n = np.bincount(codes, minlength=n_groups)
    s = np.bincount(codes, weights=v, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan), n


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------


def _aggregate(df: pd.DataFrame) -> pd.DataFrame:
    cos = df["cos_sim"].astype(np.float64)
    g = cos.groupby(df[ID], sort=False)
    out = pd.DataFrame(
        {
            SYMBOL: df[SYMBOL].groupby(df[ID], sort=False).first(),
            "n_cells": g.size(),
            "cos_sim_mean": g.mean(),
            "cos_sim_median": g.median(),
            "cos_sim_std": g.std(ddof=0),
        }
    )
    extra = ["cell_cos_sim"] + [c for c in df.columns if c.startswith("shift_")]
    for col in extra:
        if col in df.columns:
            out[f"{col}_mean"] = df[col].astype(np.float64).groupby(df[ID], sort=False).mean()
    out = out.rename_axis(ID).reset_index()
    return out.sort_values(["cos_sim_mean", ID], kind="mergesort", na_position="last")


def _goal_state_shift(
    df: pd.DataFrame,
    goal: str,
    alts: list[str],
    *,
    fdr_alpha: float,
    max_background: int,
    seed: int,
) -> pd.DataFrame:
    codes, out = _groups(df)
    rng = np.random.default_rng(seed)
    for i, state in enumerate([goal, *alts]):
        col = _shift_column(df, state, "results table")
        v, c = _finite(df[col], codes)
        if v.size == 0:
            raise IspoError(
                f"column {col} holds no values: rerun ispo perturb with start-state "
                "cells, or choose another state"
            )
        bg = v if v.size <= max_background else rng.choice(v, max_background, replace=False)
        _, p = ranksum_grouped(bg, v, c, len(out))
        mean, n = _group_mean(v, c, len(out))
        name = "goal" if i == 0 else state
        out[f"shift_to_{name}"] = mean
        out[f"{name}_pval"] = p
        out[f"{name}_fdr"] = bh_fdr(p)
        if i == 0:
            out["n_detections"] = n
            out["significant"] = out["goal_fdr"].to_numpy() < fdr_alpha
    order = ["goal_fdr", "shift_to_goal", ID]
    return out.sort_values(
        order, ascending=[True, False, True], kind="mergesort", na_position="last"
    )


def _vs_null(df: pd.DataFrame, null: pd.DataFrame, value: str, *, fdr_alpha: float) -> pd.DataFrame:
    codes, out = _groups(df)
    v, c = _finite(df[value], codes)
    mean_test, n_test = _group_mean(v, c, len(out))
    null_codes = pd.Index(out[ID]).get_indexer(null[ID])
    keep = null_codes >= 0  # genes only in the null are not tested
    nv, nc = _finite(null[value][keep], null_codes[keep])
    mean_null, n_null = _group_mean(nv, nc, len(out))
    pval = np.full(len(out), np.nan)
    test_rows = np.split(v[np.argsort(c, kind="stable")], np.cumsum(n_test)[:-1])
    null_rows = np.split(nv[np.argsort(nc, kind="stable")], np.cumsum(n_null)[:-1])
    for k in np.flatnonzero((n_test > 0) & (n_null > 0)):
        _, p = ranksum_grouped(null_rows[k], test_rows[k], np.zeros(n_test[k], np.intp), 1)
        pval[k] = p[0]
    fdr = bh_fdr(pval)
    present = pd.Index(null[ID].unique())
    note = np.where(
        ~out[ID].isin(present),
        "absent from null",
        np.where((n_test == 0) | (n_null == 0), "no values", ""),
    )
    out = out.assign(
        mean_test=mean_test,
        mean_null=mean_null,
        mean_diff=mean_test - mean_null,
        pval=pval,
        fdr=fdr,
        significant=fdr < fdr_alpha,
        n_test=n_test,
        n_null=n_null,
        note=note,
    )
    # strongest first: shifts are better high, cos_sim is better low
    strength = out["mean_diff"] if value.startswith("shift_") else -out["mean_diff"]
    out = out.assign(_strength=strength)
    out = out.sort_values(
        ["fdr", "_strength", ID],
        ascending=[True, False, True],
        kind="mergesort",
        na_position="last",
    )
    return out.drop(columns="_strength")


def _mixture(df: pd.DataFrame, value: str, *, n_components: int, seed: int) -> pd.DataFrame:
    from sklearn.mixture import GaussianMixture

    codes, out = _groups(df)
    v, c = _finite(df[value], codes)
    mean, n = _group_mean(v, c, len(out))
    impact = mean if value.startswith("shift_") else 1.0 - mean
    out = out.assign(n_cells=n, impact=impact)
    fit = ~np.isnan(impact)
    x = impact[fit].reshape(-1, 1)
    if len(np.unique(x)) < n_components:
        raise IspoError(
            f"mixture_model needs at least {n_components} genes with distinct mean "
            f"values, got {len(np.unique(x))}: perturb more genes or use another mode"
        )
    gm = GaussianMixture(n_components=n_components, random_state=seed).fit(x)
    means = gm.means_.ravel()
    order = np.argsort(means, kind="stable")  # order[0]: lowest mean, order[-1]: highest
    rank = np.empty(n_components, dtype=np.int64)
    rank[order] = np.arange(n_components)
    top, bottom = order[-1], order[0]
    prob = gm.predict_proba(x)[:, top]
    component = rank[gm.predict(x)]
    # Geneformer's border rule: beyond the outer component means, the side decides
    is_impact = component == n_components - 1
    is_impact[x[:, 0] >= means[top]] = True
    is_impact[x[:, 0] <= means[bottom]] = False
    comp_col = np.full(len(out), -1, dtype=np.int64)
    comp_col[fit] = component
    imp_col = np.zeros(len(out), dtype=bool)
    imp_col[fit] = is_impact
    prob_col = np.full(len(out), np.nan)
    prob_col[fit] = prob
    out = out.assign(component=comp_col, impact_component=imp_col, impact_probability=prob_col)
    out.attrs["component_means"] = [float(m) for m in means[order]]
    return out.sort_values(
        ["impact_component", "impact_probability", "impact", ID],
        ascending=[False, False, False, True],
        kind="mergesort",
        na_position="last",
    )


def _aggregate_gene_shifts(df: pd.DataFrame, genes: pd.DataFrame) -> pd.DataFrame:
    keys = [ID, "affected_id"]
    cos = genes["cos_sim"].astype(np.float64)
    g = cos.groupby([genes[k] for k in keys], sort=False)
    out = pd.DataFrame(
        {
            "affected_symbol": genes["affected_symbol"]
            .groupby([genes[k] for k in keys], sort=False)
            .first(),
            "cos_sim_mean": g.mean(),
            "cos_sim_std": g.std(ddof=0),
            "n_cells": g.count(),
        }
    ).reset_index()
    symbols = df.drop_duplicates(ID).set_index(ID)[SYMBOL]
    out.insert(1, SYMBOL, out[ID].map(symbols).fillna(out[ID]))
    return out.sort_values(
        ["cos_sim_mean", ID, "affected_id"], kind="mergesort", na_position="last"
    )


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def perturb_stats(
    results: pd.DataFrame | str | os.PathLike,
    *,
    mode: Mode,
    goal_state: str | None = None,
    alt_states: Sequence[str] | None = None,
    null: pd.DataFrame | str | os.PathLike | None = None,
    gene_table: pd.DataFrame | str | os.PathLike | None = None,
    fdr_alpha: float = 0.05,
    max_background: int = 100_000,
    seed: int = 0,
    n_components: int = 2,
) -> pd.DataFrame:
    """Per-gene statistics of an in-silico perturbation run.

    Parameters
    ----------
    results
        The engine's per-(cell, perturbation) table, or the path of its Parquet file (its
        metadata, from the file or a JSON beside it, supplies the cell states).
    mode
        ``"aggregate"``, ``"goal_state_shift"``, ``"vs_null"``, ``"mixture_model"`` or
        ``"aggregate_gene_shifts"`` (see the module docstring).
    goal_state, alt_states
        States whose ``shift_<state>`` columns are tested; default from the run's cell states.
        ``alt_states=[]`` tests the goal only.
    null
        ``vs_null``: a results table of the same genes from a null run (table or path).
    gene_table
        ``aggregate_gene_shifts``: the ``emb_mode="cell_and_gene"`` table (table or path).
    fdr_alpha
        Significant when the Benjamini-Hochberg FDR is below this.
    max_background
        ``goal_state_shift``: the pooled background is a seeded subsample of at most this size.
    seed
        Seed of the background subsample and of the mixture model.
    n_components
        ``mixture_model``: number of Gaussian components (the impact one has the highest mean).

    Returns
    -------
    pandas.DataFrame
        One row per perturbed gene (``aggregate_gene_shifts``: per gene pair), strongest first,
        with ``perturbed_ids`` and ``perturbed_symbols``; ``attrs["ispo_stats"]`` records the
        mode, the value tested and the parameters.
    """
    mode = MODE_ALIASES.get(mode, mode)
    if mode not in MODES:
        raise IspoError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    if not 0 < fdr_alpha < 1:
        raise IspoError(f"fdr_alpha is {fdr_alpha}: use a value between 0 and 1 (e.g. 0.05)")
    if max_background < 1:
        raise IspoError(f"max_background is {max_background}: use 1 or more (default 100000)")
    if n_components < 2:
        raise IspoError(f"n_components is {n_components}: use 2 or more (default 2)")
    df = _load(results, "results table")
    if df is None:
        raise IspoError("results is None: pass the results table or its Parquet path")
    fix = "pass the per-cell results table written by ispo perturb"
    _require(df, [ID, SYMBOL], "results table", fix)
    if len(df) == 0:
        raise IspoError(
            "results table is empty: perturb at least one gene in one cell (check "
            "the gene list and the start state)"
        )
    if df[ID].isna().any():
        raise IspoError(
            "results table has rows without perturbed_ids: pass the table written "
            "by ispo perturb, unedited"
        )
    states = _cell_states(df)
    if goal_state is None and states is not None:
        goal_state = states.get("goal_state")
    if alt_states is None:
        alt_states = (states or {}).get("alt_states") or []
    alt_states = [a for a in alt_states if a is not None and a != goal_state]
    info: dict = {"mode": mode, "fdr_alpha": fdr_alpha, "seed": seed}

    if mode == "aggregate":
        _require(df, ["cos_sim"], "results table", fix)
        out = _aggregate(df)
        info["value"] = "cos_sim"
    elif mode == "goal_state_shift":
        if goal_state is None:
            raise IspoError(
                "goal_state_shift needs a goal state: pass --goal-state, or run ispo "
                "perturb with cell states"
            )
        names = ["goal", *alt_states]
        if len(set(names)) < len(names):
            raise IspoError(
                f"alt state names {alt_states} clash with the goal columns: rename "
                "the state called 'goal'"
            )
        out = _goal_state_shift(
            df,
            goal_state,
            list(alt_states),
            fdr_alpha=fdr_alpha,
            max_background=max_background,
            seed=seed,
        )
        info.update(
            value=f"shift_{goal_state}",
            goal_state=goal_state,
            alt_states=list(alt_states),
            max_background=max_background,
        )
    elif mode == "vs_null":
        null_df = _load(null, "null table")
        if null_df is None:
            raise IspoError(
                "vs_null needs a null table: pass --null NULL.parquet (a run of the "
                "same genes on control cells or a null model)"
            )
        value = "cos_sim" if goal_state is None else _shift_column(df, goal_state, "results table")
        _require(df, [value], "results table", fix)
        _require(
            null_df,
            [ID, value],
            "null table",
            f"the null run must have {value}; rerun it with the same options as the test run",
        )
        if len(null_df) == 0:
            raise IspoError(
                "null table is empty: rerun the null perturbation with cells and genes in it"
            )
        out = _vs_null(df, null_df, value, fdr_alpha=fdr_alpha)
        info.update(value=value, goal_state=goal_state)
    elif mode == "mixture_model":
        value = "cos_sim" if goal_state is None else _shift_column(df, goal_state, "results table")
        _require(df, [value], "results table", fix)
        out = _mixture(df, value, n_components=n_components, seed=seed)
        info.update(
            value=value,
            impact=value if value != "cos_sim" else "1 - mean cos_sim",
            n_components=n_components,
            component_means=out.attrs.pop("component_means"),
        )
    else:  # aggregate_gene_shifts
        genes = _load(gene_table, "gene table")
        if genes is None:
            raise IspoError(
                "aggregate_gene_shifts needs the gene table: pass --gene-table "
                "GENES.parquet from a run with emb_mode='cell_and_gene'"
            )
        _require(
            genes,
            GENE_TABLE_COLUMNS,
            "gene table",
            "pass the per-affected-gene table of a run with emb_mode='cell_and_gene'",
        )
        if len(genes) == 0:
            raise IspoError("gene table is empty: rerun ispo perturb with emb_mode='cell_and_gene'")
        out = _aggregate_gene_shifts(df, genes)
        info["value"] = "cos_sim"
    out = out.reset_index(drop=True)
    out.attrs = {"ispo_stats": info}
    return out


def write_stats(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a stats table as ``.csv``, ``.tsv`` or ``.parquet`` (by extension), atomically.

    The table goes to a temporary file beside ``path`` that then replaces it, so a failure never
    leaves a half-written file. Whether an existing ``path`` may be replaced is the caller's
    decision (see :func:`ispo.io.write.check_output`).
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".tsv", ".parquet", ".pq"):
        raise IspoError(f"cannot tell the format of {out}: end the name in .csv, .tsv or .parquet")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise IspoError(f"output folder {parent} does not exist: create it first")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        if suffix in (".csv", ".tsv"):
            df.to_csv(tmp, index=False, sep="," if suffix == ".csv" else "\t")
        else:
            df.to_parquet(tmp, index=False)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
