"""``goal_state_shift``: which genes, when perturbed, move cells toward the goal (and each alt)
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
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from ispo.errors import IspoError
from ispo.perturbation.stats.inputs import (
    ID,
    cell_codes,
    finite,
    gene_codes,
    group_mean,
    shift_column,
)
from ispo.perturbation.stats.options import Method, Run
from ispo.perturbation.stats.tests import bh_fdr, ranksum_grouped, signed_rank_grouped


def _geneformer_goal_shift(
    df: pd.DataFrame,
    goal: str,
    alts: list[str],
    *,
    fdr_alpha: float,
    max_background: int,
    seed: int,
) -> pd.DataFrame:
    """Geneformer's test, unchanged: each gene's shifts vs all genes' shifts pooled."""
    codes, out = gene_codes(df)
    rng = np.random.default_rng(seed)
    for i, state in enumerate([goal, *alts]):
        col = shift_column(df, state, "results table")
        v, c = finite(df[col], codes)
        if v.size == 0:
            raise IspoError(
                f"column {col} holds no values: rerun ispo perturb with start-state "
                "cells, or choose another state"
            )
        bg = v if v.size <= max_background else rng.choice(v, max_background, replace=False)
        _, p = ranksum_grouped(bg, v, c, len(out))
        mean, n = group_mean(v, c, len(out))
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
    effect, n = group_mean(centred, genes, n_genes)
    mean_shift, _ = group_mean(values, genes, n_genes)
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
    codes, out = gene_codes(df)
    cells = cell_codes(df)
    for i, state in enumerate([goal, *alts]):
        col = shift_column(df, state, "results table")
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


def run_goal_state_shift(run: Run) -> tuple[pd.DataFrame, dict]:
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
