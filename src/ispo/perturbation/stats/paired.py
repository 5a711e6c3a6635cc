"""The ``paired`` analysis of one per-(cell, gene) value: which genes move cells toward a state,
in the plain sense, more than the other genes of the same cells.

It serves ``goal_state_shift`` (the value is ``shift_<state>``) and ``class_prob`` (the value is
``delta_prob_<goal class>``). A gene is called ``toward_<state>`` when both hold:

1. **it moves cells toward the state**: its mean value over its cells is above zero (one-sided
   t test; the 95% interval of the mean is reported and lies above zero for every call);
2. **it moves them more than the cell's other genes**: the within-cell rank test
   (:func:`~ispo.perturbation.stats.tests.within_cell_rank_test`), valid whatever the shape of
   a cell's values.

The p-value of "toward" is the larger of the two one-sided p-values (an intersection-union test,
Berger 1982: it is valid when either claim is false), likewise "away" (mean below zero and less
than the other genes); the gene's p-value is twice the smaller of the two (a two-sided test whose
sign gives the direction), and one Benjamini-Hochberg correction over the tested genes controls
the false discovery rate of all calls, toward and away together, at ``fdr_alpha``. A gene that
moves cells toward the state, but less than the cell's other genes do, is called neither.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import ndtr

from ispo.errors import IspoError
from ispo.perturbation.stats.tests import bh_fdr, mean_t_test, within_cell_rank_test

#: How the paired analysis tests, as recorded in a table's ``attrs["ispo_stats"]["test"]``.
PAIRED_TEST = (
    "mean > 0 (t) and within-cell rank above the cell's other genes (normal scores), "
    "intersection-union; one BH over both directions"
)


def paired_columns(
    values: np.ndarray,
    genes: np.ndarray,
    cells: np.ndarray,
    n_genes: int,
    *,
    state: str,
    value_name: str,
    fdr_alpha: float,
    min_cells: int,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The output columns of one state, and each gene's number of cells and tested flag.

    ``values[i]`` is the value of gene ``genes[i]`` in cell ``cells[i]`` (no NaN). Columns, in
    order: ``<value_name>`` (mean over the gene's cells) with ``_ci95_low``/``_ci95_high``;
    ``<value_name>_vs_cell_genes``, the mean of each value minus the median value of its cell's
    genes (Hodges & Lehmann's aligned observations: the effect relative to the cell's other
    genes, in the value's units); ``<state>_percentile_in_cell`` (0.5: like the cell's typical
    gene); ``<state>_vs_cell_z`` and ``<state>_vs_cell_pval`` (the within-cell rank test,
    two-sided); ``<state>_call_pval`` and ``<state>_call_fdr`` (the call, see the module);
    ``toward_<state>`` and ``away_from_<state>``. Genes seen in fewer than ``min_cells`` cells
    are described, not tested: NaN p-values, not counted in the FDR, never called.
    """
    mean = mean_t_test(values, genes, n_genes)
    centred = values - pd.Series(values).groupby(cells).transform("median").to_numpy()
    relative = np.bincount(genes, weights=centred, minlength=n_genes) / np.maximum(mean["n"], 1)
    z, percentile = within_cell_rank_test(values, genes, cells, n_genes)
    tested = mean["n"] >= min_cells
    z_tested = np.where(tested, z, np.nan)
    p_toward = np.maximum(ndtr(-z_tested), mean["p_greater"])  # NaN (untested) stays NaN
    p_away = np.maximum(ndtr(z_tested), mean["p_less"])
    call_p = np.minimum(2 * np.fmin(p_toward, p_away), 1.0)
    fdr = bh_fdr(call_p)
    significant = fdr < fdr_alpha
    columns = {
        value_name: mean["mean"],
        f"{value_name}_ci95_low": mean["ci_low"],
        f"{value_name}_ci95_high": mean["ci_high"],
        f"{value_name}_vs_cell_genes": np.where(mean["n"] > 0, relative, np.nan),
        f"{state}_percentile_in_cell": percentile,
        f"{state}_vs_cell_z": z_tested,
        f"{state}_vs_cell_pval": 2 * ndtr(-np.abs(z_tested)),
        f"{state}_call_pval": call_p,
        f"{state}_call_fdr": fdr,
        f"toward_{state}": significant & (p_toward < p_away) & (mean["ci_low"] > 0),
        f"away_from_{state}": significant & (p_away < p_toward) & (mean["ci_high"] < 0),
    }
    return columns, mean["n"], tested


def calls_first(out: pd.DataFrame, state: str, id_column: str) -> pd.DataFrame:
    """Rows in reading order: toward calls (strongest first), the other tested genes, away
    calls (strongest last), then the untested genes."""
    group = np.select(
        [out[f"toward_{state}"], out[f"away_from_{state}"], out[f"{state}_call_fdr"].isna()],
        [0, 2, 3],
        1,
    )
    fdr = out[f"{state}_call_fdr"].to_numpy()
    key = np.where(group == 2, -fdr, fdr)
    return (
        out.assign(_group=group, _key=key, _z=out[f"{state}_vs_cell_z"])
        .sort_values(
            ["_group", "_key", "_z", id_column],
            ascending=[True, True, False, True],
            kind="mergesort",
            na_position="last",
        )
        .drop(columns=["_group", "_key", "_z"])
    )


def check_comparable(out: pd.DataFrame, state: str) -> None:
    """Refuse a table where no tested gene shares a cell with another gene (nothing to rank)."""
    if out["tested"].any() and not (out["tested"] & out[f"{state}_vs_cell_z"].notna()).any():
        raise IspoError(
            "every cell has a single perturbation, so no gene can be compared with the other "
            "genes of its cell: perturb genes one at a time (genes='all'), or use "
            "method='geneformer' or mode='vs_null'"
        )


#: The columns a summary of a paired goal table shows first (``ispo report``): the embedding
#: shift of ``goal_state_shift`` or the class-probability change of ``class_prob``.
SUMMARY_COLUMNS = (
    "perturbed_symbols",
    "perturbed_ids",
    "n_detections",
    "shift_to_goal",
    "shift_to_goal_ci95_low",
    "shift_to_goal_ci95_high",
    "shift_to_goal_vs_cell_genes",
    "delta_prob_goal",
    "delta_prob_goal_ci95_low",
    "delta_prob_goal_ci95_high",
    "flip_to_goal_share",
    "goal_percentile_in_cell",
    "goal_call_fdr",
    "toward_goal",
    "away_from_goal",
)


def paired_summary(table: pd.DataFrame) -> str:
    """One paragraph saying how a paired goal table was tested and what it found."""
    info = table.attrs["ispo_stats"]
    untested = info["n_untested"]
    return (
        "Paired test: a gene is called toward the goal when, over the cells that detect it, its "
        "mean shift is above zero (t test; 95% interval shown) and it ranks above the cell's "
        "other genes (within-cell normal scores: valid whatever the shape of a cell's shifts); "
        "away likewise. One Benjamini-Hochberg FDR over both directions and the "
        f"{info['n_tested']:,} genes seen in at least {info['min_cells']} cells"
        f"{f' ({untested:,} seen in fewer: listed, not tested)' if untested else ''}. "
        f"{int(table['toward_goal'].sum()):,} genes move cells toward the goal and "
        f"{int(table['away_from_goal'].sum()):,} away from it at FDR < {info['fdr_alpha']}. "
        "Geneformer's two-sided test: `ispo perturb-stats --method geneformer`."
    )
