"""Statistics over in-silico perturbation results (Geneformer's ``InSilicoPerturberStats``).

The engine writes one row per (cell, perturbation); :func:`perturb_stats` turns that into one row
per perturbed gene (or per perturbed/affected gene pair). Modes, as in Geneformer:

- ``aggregate``: mean, median and std of ``cos_sim`` (lower = stronger effect), mean
  ``cell_cos_sim`` and of each ``shift_<state>``, number of cells.
- ``goal_state_shift``: which genes, when perturbed, move cells toward the goal (and each alt)
  state. Two methods:

  - ``paired`` (default): each (cell, gene) shift minus the median shift of all genes perturbed
    in the *same* cell (aligned observations, Hodges & Lehmann 1962), so a cell's own distance to
    the goal cancels out; per gene, one-sided Wilcoxon signed-rank tests (Wilcoxon 1945) over the
    cells that detect it, one toward the goal and one away from it, each with its own
    Benjamini-Hochberg FDR over the genes detected in at least ``min_cells`` cells (the others are
    reported, not tested). The effect is the mean centred shift with a 95% t interval.
  - ``geneformer``: Geneformer's test, unchanged: each gene's shifts against all genes' shifts
    pooled (a seeded subsample of at most ``max_background``), two-sided Wilcoxon rank-sum,
    Benjamini-Hochberg FDR over all genes. Use it to reproduce Geneformer analyses; it mixes genes
    that move cells away from the goal with those that move them toward it, and lets cells far
    from the goal dominate.

- ``vs_null``: each gene's values against the same gene's values in a null run (rank-sum, BH).
- ``mixture_model``: a seeded Gaussian mixture on per-gene mean impact; components are ordered by
  their means here (Geneformer assumes sklearn's component 0 is the lower one; it need not be).
- ``aggregate_gene_shifts``: per (perturbed, affected) gene pair, mean/std/N of ``cos_sim`` from
  the ``emb_mode="cell_and_gene"`` gene table.

Every output carries gene ids and symbols and records how it was made in ``df.attrs["ispo_stats"]``;
``columns="geneformer"`` renames (and, for Geneformer's tests, orders) them as Geneformer does.
The rank-sum test is computed against a sorted background with :func:`numpy.searchsorted`
(the same z and p as :func:`scipy.stats.ranksums`, without re-ranking the background per gene).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.special import ndtr

from ispo.errors import IspoError
from ispo.io.write import replacing
from ispo.settings import Choice

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


#: Largest group size whose signed-rank p-values come from the exact null distribution.
EXACT_MAX_N = 50


@functools.cache
def _signed_rank_sf() -> np.ndarray:
    """``sf[n, w] = P(W+ >= w)`` for ``n`` untied nonzero differences under the null.

    W+ of n differences is the sum of a random subset of the ranks 1..n; the number of subsets
    with each sum follows from adding the ranks one at a time (counts stay exact in float64).
    """
    top = EXACT_MAX_N * (EXACT_MAX_N + 1) // 2
    counts = np.zeros(top + 1)
    counts[0] = 1.0
    sf = np.zeros((EXACT_MAX_N + 1, top + 2))
    sf[0, 0] = 1.0
    for n in range(1, EXACT_MAX_N + 1):
        counts = counts + np.concatenate([np.zeros(n), counts[:-n]])
        sf[n, : top + 1] = np.cumsum((counts / 2.0**n)[::-1])[::-1]
    return sf


def signed_rank_grouped(
    values: np.ndarray, codes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-sided Wilcoxon signed-rank p-values of each group of ``values`` against zero.

    Returns ``(p_greater, p_less, n_used)``. Zeros are dropped (Wilcoxon's convention, scipy's
    ``zero_method="wilcox"``); ranks of ``|values|`` are taken within each group, midranks for
    ties. A group with at most :data:`EXACT_MAX_N` values and no ties uses the exact null
    distribution (``scipy.stats.wilcoxon(method="exact")``); otherwise the normal approximation
    with the tie correction and no continuity correction (scipy's ``method="asymptotic"``).
    Groups with no nonzero value get NaN.
    """
    keep = values != 0
    v, c = np.asarray(values, np.float64)[keep], np.asarray(codes)[keep]
    a = np.abs(v)
    order = np.lexsort((a, c))
    a_s, c_s, pos_s = a[order], c[order], v[order] > 0
    if a_s.size == 0:
        nan = np.full(n_groups, np.nan)
        return nan, nan.copy(), np.zeros(n_groups, np.int64)
    idx = np.arange(a_s.size)
    new_group = np.r_[True, c_s[1:] != c_s[:-1]]
    new_run = new_group | np.r_[True, a_s[1:] != a_s[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, idx, 0))
    run_start = np.flatnonzero(new_run)
    run_len = np.diff(np.r_[run_start, a_s.size]).astype(np.float64)
    run_rank = (run_start - group_start[run_start]) + (run_len + 1) / 2
    ranks = run_rank[np.cumsum(new_run) - 1]
    n = np.bincount(c_s, minlength=n_groups).astype(np.float64)
    w_plus = np.bincount(c_s, weights=ranks * pos_s, minlength=n_groups)
    ties = np.bincount(c_s[run_start], weights=run_len**3 - run_len, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(n * (n + 1) * (2 * n + 1) / 24 - ties / 48)
        z = (w_plus - n * (n + 1) / 4) / sd
    p_greater, p_less = ndtr(-z), ndtr(z)
    exact = (n <= EXACT_MAX_N) & (ties == 0) & (n > 0)
    if exact.any():
        sf = _signed_rank_sf()
        ne, we = n[exact].astype(np.intp), np.rint(w_plus[exact]).astype(np.intp)
        p_greater[exact] = sf[ne, we]
        p_less[exact] = sf[ne, ne * (ne + 1) // 2 - we]
    p_greater[n == 0] = p_less[n == 0] = np.nan
    return p_greater, p_less, n.astype(np.int64)


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


def _geneformer_goal_shift(
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


def _cell_codes(df: pd.DataFrame) -> np.ndarray:
    """One code per cell (``obs_index``, else ``cell_id``): the blocks of the paired test."""
    key = next((k for k in ("obs_index", "cell_id") if k in df.columns), None)
    if key is None:
        raise IspoError(
            "results table lacks obs_index and cell_id, which the paired test needs to compare "
            "genes within a cell: pass the table written by ispo perturb, or use "
            "method='geneformer'"
        )
    return pd.factorize(df[key], sort=False)[0]


def paired_shift_test(
    values: np.ndarray, genes: np.ndarray, cells: np.ndarray, n_genes: int, min_cells: int
) -> dict[str, np.ndarray]:
    """Within-cell test of each gene's shifts: the arrays of one state's ``paired`` columns.

    ``values[i]`` is the shift of row i, perturbing gene ``genes[i]`` in cell ``cells[i]``. Each
    value minus its cell's median value (over the genes perturbed in that cell) removes what all
    perturbations of the cell share, chiefly its distance to the state; per gene, the centred
    values are tested against zero with one-sided signed-rank tests (:func:`signed_rank_grouped`)
    when the gene was seen in at least ``min_cells`` cells. ``effect`` is their mean, with a 95%
    t interval. FDRs are Benjamini-Hochberg over the tested genes, one family per direction.
    """
    centred = values - pd.Series(values).groupby(cells).transform("median").to_numpy()
    effect, n = _group_mean(centred, genes, n_genes)
    mean_shift, _ = _group_mean(values, genes, n_genes)
    dev = centred - effect[genes]
    with np.errstate(invalid="ignore", divide="ignore"):
        sem = np.sqrt(np.bincount(genes, weights=dev**2, minlength=n_genes) / (n - 1) / n)
        half = sps.t.ppf(0.975, n - 1) * sem
    tested = n >= min_cells
    p_up, p_down, _ = signed_rank_grouped(centred, genes, n_genes)
    p_up[~tested] = p_down[~tested] = np.nan
    return {
        "shift": mean_shift,
        "effect": effect,
        "ci_low": effect - half,
        "ci_high": effect + half,
        "toward_pval": p_up,
        "toward_fdr": bh_fdr(p_up),
        "away_pval": p_down,
        "away_fdr": bh_fdr(p_down),
        "n": n,
        "tested": tested,
    }


def _paired_goal_shift(
    df: pd.DataFrame, goal: str, alts: list[str], *, fdr_alpha: float, min_cells: int
) -> pd.DataFrame:
    """The ``paired`` goal-state test for the goal and each alt state (columns per state)."""
    codes, out = _groups(df)
    cells = _cell_codes(df)
    for i, state in enumerate([goal, *alts]):
        col = _shift_column(df, state, "results table")
        v = df[col].to_numpy(dtype=np.float64)
        ok = ~np.isnan(v)
        if not ok.any():
            raise IspoError(
                f"column {col} holds no values: rerun ispo perturb with start-state "
                "cells, or choose another state"
            )
        r = paired_shift_test(v[ok], codes[ok], cells[ok], len(out), min_cells)
        name = "goal" if i == 0 else state
        out[f"shift_to_{name}"] = r["shift"]
        for key in ("effect", "ci_low", "ci_high"):
            out[f"{name}_{key.replace('ci_', 'effect_ci95_')}"] = r[key]
        for key in ("toward_pval", "toward_fdr", "away_pval", "away_fdr"):
            out[f"{name}_{key}"] = r[key]
        out[f"toward_{name}"] = r["toward_fdr"] < fdr_alpha
        out[f"away_from_{name}"] = r["away_fdr"] < fdr_alpha
        if i == 0:
            out["n_detections"] = r["n"]
            out["tested"] = r["tested"]
    if not (out["tested"] & out["goal_toward_pval"].notna()).any() and out["tested"].any():
        raise IspoError(
            "every cell has a single perturbation, so no gene can be compared with the other "
            "genes of its cell: perturb genes one at a time (genes='all'), or use "
            "method='geneformer' or mode='vs_null'"
        )
    return out.sort_values(
        ["goal_toward_fdr", "goal_effect", ID],
        ascending=[True, False, True],
        kind="mergesort",
        na_position="last",
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
    out = out.assign(n_cells=n, value_mean=mean, impact=impact)
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
# Options and mode runners
# ---------------------------------------------------------------------------------------------


class Method(Choice):
    """How ``goal_state_shift`` tests genes (see the module docstring)."""

    PAIRED = "paired"
    GENEFORMER = "geneformer"


class Columns(Choice):
    """Output column names: ispo's, or those of Geneformer's ``InSilicoPerturberStats``."""

    ISPO = "ispo"
    GENEFORMER = "geneformer"


@dataclass(frozen=True)
class StatsOptions:
    """The options of :func:`perturb_stats` after validation (see its parameters)."""

    method: Method = Method.PAIRED
    fdr_alpha: float = 0.05
    min_cells: int = 10
    max_background: int = 100_000
    seed: int = 0
    n_components: int = 2


@dataclass
class _Run:
    """What one mode works on: the results, the states tested, the extra tables, the options."""

    df: pd.DataFrame
    goal: str | None
    alts: list[str]
    null: pd.DataFrame | str | os.PathLike | None
    gene_table: pd.DataFrame | str | os.PathLike | None
    opts: StatsOptions


FIX = "pass the per-cell results table written by ispo perturb"


def _run_aggregate(run: _Run) -> tuple[pd.DataFrame, dict]:
    _require(run.df, ["cos_sim"], "results table", FIX)
    return _aggregate(run.df), {"value": "cos_sim"}


def _run_goal_state_shift(run: _Run) -> tuple[pd.DataFrame, dict]:
    if run.goal is None:
        raise IspoError(
            "goal_state_shift needs a goal state: pass --goal-state, or run ispo "
            "perturb with cell states"
        )
    names = ["goal", *run.alts]
    if len(set(names)) < len(names):
        raise IspoError(
            f"alt state names {run.alts} clash with the goal columns: rename the state "
            "called 'goal'"
        )
    o = run.opts
    info = {
        "value": f"shift_{run.goal}",
        "goal_state": run.goal,
        "alt_states": list(run.alts),
        "method": o.method.value,
    }
    if o.method is Method.GENEFORMER:
        out = _geneformer_goal_shift(
            run.df,
            run.goal,
            run.alts,
            fdr_alpha=o.fdr_alpha,
            max_background=o.max_background,
            seed=o.seed,
        )
        info.update(test="two-sided rank-sum vs all genes pooled", max_background=o.max_background)
        return out, info
    out = _paired_goal_shift(
        run.df, run.goal, run.alts, fdr_alpha=o.fdr_alpha, min_cells=o.min_cells
    )
    info.update(
        test="one-sided signed-rank of within-cell centred shifts",
        min_cells=o.min_cells,
        n_tested=int(out["tested"].sum()),
        n_untested=int((~out["tested"]).sum()),
    )
    return out, info


def _value_column(run: _Run) -> str:
    """``cos_sim``, or the goal state's shift column when a goal state is known."""
    if run.goal is None:
        value = "cos_sim"
    else:
        value = _shift_column(run.df, run.goal, "results table")
    _require(run.df, [value], "results table", FIX)
    return value


def _side_table(
    table: pd.DataFrame | str | os.PathLike | None,
    what: str,
    absent: str,
    columns: Sequence[str],
    fix: str,
    refill: str,
) -> pd.DataFrame:
    """A second table a mode needs (null run, gene table): given, with ``columns``, not empty."""
    df = _load(table, what)
    if df is None:
        raise IspoError(absent)
    _require(df, columns, what, fix)
    if len(df) == 0:
        raise IspoError(f"{what} is empty: {refill}")
    return df


def _run_vs_null(run: _Run) -> tuple[pd.DataFrame, dict]:
    value = _value_column(run)
    null_df = _side_table(
        run.null,
        "null table",
        "vs_null needs a null table: pass --null NULL.parquet (a run of the same genes on "
        "control cells or a null model)",
        [ID, value],
        f"the null run must have {value}; rerun it with the same options as the test run",
        "rerun the null perturbation with cells and genes in it",
    )
    out = _vs_null(run.df, null_df, value, fdr_alpha=run.opts.fdr_alpha)
    return out, {"value": value, "goal_state": run.goal}


def _run_mixture(run: _Run) -> tuple[pd.DataFrame, dict]:
    value = _value_column(run)
    k = run.opts.n_components
    out = _mixture(run.df, value, n_components=k, seed=run.opts.seed)
    return out, {
        "value": value,
        "impact": value if value != "cos_sim" else "1 - mean cos_sim",
        "n_components": k,
        "component_means": out.attrs.pop("component_means"),
    }


def _run_gene_shifts(run: _Run) -> tuple[pd.DataFrame, dict]:
    genes = _side_table(
        run.gene_table,
        "gene table",
        "aggregate_gene_shifts needs the gene table: pass --gene-table GENES.parquet from a "
        "run with emb_mode='cell_and_gene'",
        GENE_TABLE_COLUMNS,
        "pass the per-affected-gene table of a run with emb_mode='cell_and_gene'",
        "rerun ispo perturb with emb_mode='cell_and_gene'",
    )
    return _aggregate_gene_shifts(run.df, genes), {"value": "cos_sim"}


_RUNNERS = {
    "aggregate": _run_aggregate,
    "goal_state_shift": _run_goal_state_shift,
    "vs_null": _run_vs_null,
    "mixture_model": _run_mixture,
    "aggregate_gene_shifts": _run_gene_shifts,
}


# ---------------------------------------------------------------------------------------------
# Geneformer's column names
# ---------------------------------------------------------------------------------------------

#: Per mode, ispo's column -> the column of Geneformer's ``InSilicoPerturberStats`` output, in
#: Geneformer's column order. Geneformer's token-id columns (``Gene`` of goal_state_shift,
#: vs_null and mixture_model; ``Perturbed``/``Affected`` of aggregate_gene_shifts) have no ispo
#: counterpart: ispo keys genes by Ensembl id (``Ensembl_ID``).
GENEFORMER_NAMES: dict[str, dict[str, str]] = {
    "aggregate": {"cos_sim": "Cosine_sim", SYMBOL: "Gene"},
    "goal_state_shift": {
        SYMBOL: "Gene_name",
        ID: "Ensembl_ID",
        "shift_to_goal": "Shift_to_goal_end",
        "shift_to_{alt}": "Shift_to_alt_end_{alt}",
        "goal_pval": "Goal_end_vs_random_pval",
        "{alt}_pval": "Alt_end_vs_random_pval_{alt}",
        "goal_fdr": "Goal_end_FDR",
        "{alt}_fdr": "Alt_end_FDR_{alt}",
        "n_detections": "N_Detections",
        "significant": "Sig",
    },
    "vs_null": {
        SYMBOL: "Gene_name",
        ID: "Ensembl_ID",
        "mean_test": "Test_avg_shift",
        "mean_null": "Null_avg_shift",
        "mean_diff": "Test_vs_null_avg_shift",
        "pval": "Test_vs_null_pval",
        "fdr": "Test_vs_null_FDR",
        "n_test": "N_Detections_test",
        "n_null": "N_Detections_null",
        "significant": "Sig",
    },
    "mixture_model": {
        SYMBOL: "Gene_name",
        ID: "Ensembl_ID",
        "value_mean": "Test_avg_shift",
        "impact_component": "Impact_component",
        "n_cells": "N_Detections",
    },
    "aggregate_gene_shifts": {
        SYMBOL: "Gene_name",
        ID: "Ensembl_ID",
        "affected_symbol": "Affected_gene_name",
        "affected_id": "Affected_Ensembl_ID",
        "cos_sim_mean": "Cosine_sim_mean",
        "cos_sim_std": "Cosine_sim_stdev",
        "n_cells": "N_Detections",
    },
}
#: Geneformer's row order of each mode's table: (columns, ascending).
GENEFORMER_ORDER: dict[str, tuple[list[str], list[bool]]] = {
    "goal_state_shift": (["Sig", "Shift_to_goal_end", "Goal_end_FDR"], [False, False, True]),
    "vs_null": (["Sig", "Test_vs_null_avg_shift", "Test_vs_null_FDR"], [False, False, True]),
    "mixture_model": (["Impact_component", "Test_avg_shift"], [False, True]),
    "aggregate_gene_shifts": (["Cosine_sim_mean"], [True]),
}
#: Columns the paired test shares with Geneformer's table (the rest keep ispo's names).
_PAIRED_SHARED = {SYMBOL, ID, "shift_to_goal", "shift_to_{alt}", "n_detections"}


def _expand(names: dict[str, str], alts: Sequence[str]) -> dict[str, str]:
    """The ``{alt}`` entries written out once per alt state, keeping the order."""
    out: dict[str, str] = {}
    for ours, theirs in names.items():
        for alt in alts if "{alt}" in ours else [None]:
            out[ours.format(alt=alt)] = theirs.format(alt=alt)
    return out


def geneformer_columns(stats: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """A :func:`perturb_stats` table with Geneformer's ``InSilicoPerturberStats`` column names.

    Geneformer's columns come first in Geneformer's order, ispo's extra columns after them;
    ``Sig`` and ``Impact_component`` are 1/0 and rows are in Geneformer's order. Numbers are
    unchanged. ``aggregate`` becomes Geneformer's ``aggregate_data`` table (one row per cell and
    perturbed gene: ``Cosine_sim``, ``Gene``). With the ``paired`` goal-state method only the
    columns it shares with Geneformer's table are renamed: its tests have no Geneformer name.
    """
    info = dict(stats.attrs.get("ispo_stats", {}))
    mode = info.get("mode")
    if mode == "aggregate":
        order = np.argsort(pd.factorize(results[ID], sort=False)[0], kind="stable")
        rows = results.iloc[order]
        out = pd.DataFrame(
            {"Cosine_sim": rows["cos_sim"].to_numpy(), "Gene": rows[SYMBOL].to_numpy()}
        )
        out.attrs = {"ispo_stats": {**info, "columns": Columns.GENEFORMER.value}}
        return out
    names = _expand(GENEFORMER_NAMES[mode], info.get("alt_states") or [])
    paired = mode == "goal_state_shift" and info.get("method") == Method.PAIRED.value
    if paired:
        shared = _expand({k: k for k in _PAIRED_SHARED}, info.get("alt_states") or [])
        names = {k: v for k, v in names.items() if k in shared}
    names = {k: v for k, v in names.items() if k in stats.columns}
    extra = [c for c in stats.columns if c not in names]
    out = stats[list(names) + extra].rename(columns=names)
    for col in ("Sig", "Impact_component"):
        if col in out.columns:
            out[col] = out[col].astype(np.int64)
    if mode in GENEFORMER_ORDER and not paired:
        by, ascending = GENEFORMER_ORDER[mode]
        out = out.sort_values(by, ascending=ascending, kind="mergesort", na_position="last")
    out = out.reset_index(drop=True)
    out.attrs = {"ispo_stats": {**info, "columns": Columns.GENEFORMER.value}}
    return out


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _options(
    method: str, fdr_alpha: float, min_cells: int, max_background: int, seed: int, k: int
) -> StatsOptions:
    """Checked options; each bad value is one line naming it and the fix."""
    if not 0 < fdr_alpha < 1:
        raise IspoError(f"fdr_alpha is {fdr_alpha}: use a value between 0 and 1 (e.g. 0.05)")
    if max_background < 1:
        raise IspoError(f"max_background is {max_background}: use 1 or more (default 100000)")
    if k < 2:
        raise IspoError(f"n_components is {k}: use 2 or more (default 2)")
    if min_cells < 2:
        raise IspoError(f"min_cells is {min_cells}: use 2 or more (default 10)")
    return StatsOptions(
        method=Method.parse(method, "method"),
        fdr_alpha=fdr_alpha,
        min_cells=min_cells,
        max_background=max_background,
        seed=seed,
        n_components=k,
    )


def _results_table(results: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """The engine's results, loaded and checked for the columns every mode needs."""
    df = _load(results, "results table")
    if df is None:
        raise IspoError("results is None: pass the results table or its Parquet path")
    _require(df, [ID, SYMBOL], "results table", FIX)
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
    return df


def _states(
    df: pd.DataFrame, goal_state: str | None, alt_states: Sequence[str] | None
) -> tuple[str | None, list[str]]:
    """The goal and alt states: as given, else the run's cell states."""
    states = _cell_states(df)
    if goal_state is None and states is not None:
        goal_state = states.get("goal_state")
    if alt_states is None:
        alt_states = (states or {}).get("alt_states") or []
    return goal_state, [a for a in alt_states if a is not None and a != goal_state]


def _info(df: pd.DataFrame, mode: str, fdr_alpha: float, seed: int, extra: dict) -> dict:
    """How a table was made; ``random_init`` when the run had random weights (plots say so)."""
    info = {"mode": mode, "fdr_alpha": fdr_alpha, "seed": seed, **extra}
    meta = df.attrs.get("ispo")
    if isinstance(meta, dict) and meta.get("random_init"):
        info["random_init"] = True
    return info


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
    method: Literal["paired", "geneformer"] = "paired",
    min_cells: int = 10,
    columns: Literal["ispo", "geneformer"] = "ispo",
) -> pd.DataFrame:
    """Per-gene statistics of an in-silico perturbation run.

    Parameters
    ----------
    results
        The engine's per-(cell, perturbation) table, or its Parquet path (+ metadata: states).
    mode
        One of :data:`MODES` (see the module docstring); Geneformer's ``aggregate_data`` too.
    goal_state, alt_states
        States whose ``shift_<state>`` are tested (default: the run's; ``alt_states=[]``: none).
    null, gene_table
        ``vs_null``: a null run's results; ``aggregate_gene_shifts``: the
        ``emb_mode="cell_and_gene"`` table (tables or paths).
    fdr_alpha
        Significant below this Benjamini-Hochberg FDR.
    max_background, seed, n_components
        ``method="geneformer"``: the pooled background is a seeded subsample of at most
        ``max_background``; ``mixture_model``: ``n_components`` Gaussians seeded with ``seed``.
    method
        ``goal_state_shift``: ``"paired"`` (within-cell, one-sided, toward and away apart) or
        ``"geneformer"`` (Geneformer's test, to reproduce Geneformer analyses).
    min_cells
        ``method="paired"``: genes seen in fewer cells are reported, not tested nor counted.
    columns
        ``"geneformer"``: Geneformer's column names and row order (:func:`geneformer_columns`).

    Returns
    -------
    pandas.DataFrame
        One row per perturbed gene (``aggregate_gene_shifts``: per gene pair), strongest first,
        with gene ids and symbols; ``attrs["ispo_stats"]`` records how it was made.
    """
    mode = MODE_ALIASES.get(mode, mode)
    if mode not in MODES:
        raise IspoError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    opts = _options(method, fdr_alpha, min_cells, max_background, seed, n_components)
    names = Columns.parse(columns, "columns")
    df = _results_table(results)
    goal, alts = _states(df, goal_state, alt_states)
    out, extra = _RUNNERS[mode](_Run(df, goal, alts, null, gene_table, opts))
    out = out.reset_index(drop=True)
    out.attrs = {"ispo_stats": _info(df, mode, fdr_alpha, seed, extra)}
    return geneformer_columns(out, df) if names is Columns.GENEFORMER else out


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
    with replacing(out) as tmp:  # missing parent folders are created
        if suffix in (".csv", ".tsv"):
            df.to_csv(tmp, index=False, sep="," if suffix == ".csv" else "\t")
        else:
            df.to_parquet(tmp, index=False)
    return out
