"""``goal_state_shift``: which genes, when perturbed, move cells toward the goal (and each alt)
state. Two methods:

- ``paired`` (default): per gene, over the cells that detect it, two claims are tested together
  (:mod:`ispo.perturbation.stats.paired`): its mean shift toward the state is above zero, and
  within each cell it ranks above the cell's other genes (a rank test valid whatever the shape
  of a cell's shifts: skewed, heavy-tailed, each cell with its own scale). Calls ``toward_goal``
  and ``away_from_goal`` share one Benjamini-Hochberg FDR; genes detected in fewer than
  ``min_cells`` cells are reported, not tested.
- ``geneformer``: Geneformer's test, unchanged: each gene's shifts against all genes' shifts
  pooled (a seeded subsample of at most ``max_background``), two-sided Wilcoxon rank-sum,
  Benjamini-Hochberg FDR over all genes. Use it to reproduce Geneformer analyses; it mixes genes
  that move cells away from the goal with those that move them toward it, and lets cells far
  from the goal dominate.

Names: ``shift_to_goal`` is the mean of the perturb table's ``shift_<goal state>`` column (e.g.
``shift_stim``), ``shift_to_<alt>`` that of ``shift_<alt>``; ``attrs["ispo_stats"]["value"]``
names the column read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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
from ispo.perturbation.stats.paired import (
    PAIRED_TEST,
    calls_first,
    check_comparable,
    paired_columns,
)
from ispo.perturbation.stats.tests import bh_fdr, ranksum_grouped


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
        name = "goal" if i == 0 else state
        columns, n, tested = paired_columns(
            v[ok],
            codes[ok],
            cells[ok],
            len(out),
            state=name,
            value_name=f"shift_to_{name}",
            fdr_alpha=fdr_alpha,
            min_cells=min_cells,
        )
        out = out.assign(**columns)
        if i == 0:
            out = out.assign(n_detections=n, tested=tested)
    check_comparable(out, "goal")
    return calls_first(out, "goal", ID)


def run_goal_state_shift(run: Run) -> tuple[pd.DataFrame, dict]:
    """The mode's table (either method) and what :func:`ispo.perturb_stats` records about it."""
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
        test=PAIRED_TEST,
        min_cells=o.min_cells,
        n_tested=int(out["tested"].sum()),
        n_untested=int((~out["tested"]).sum()),
    )
    return out, info
