"""``vs_null``: each gene's values against the same gene's values in a null run (a run of the
same genes on control cells, or with a null model): two-sided Wilcoxon rank-sum per gene,
Benjamini-Hochberg FDR over the genes present in both."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ispo.perturbation.stats.inputs import (
    ID,
    finite,
    gene_codes,
    group_mean,
    side_table,
    value_column,
)
from ispo.perturbation.stats.options import Run
from ispo.perturbation.stats.tests import bh_fdr, ranksum_grouped


def vs_null_table(
    df: pd.DataFrame, null: pd.DataFrame, value: str, *, fdr_alpha: float
) -> pd.DataFrame:
    """Per gene: mean in the test and in the null run, their difference, rank-sum p and FDR.

    Genes absent from the null keep a NaN p-value and are left out of the FDR (Geneformer sets
    1 and counts them).
    """
    codes, out = gene_codes(df)
    v, c = finite(df[value], codes)
    mean_test, n_test = group_mean(v, c, len(out))
    null_codes = pd.Index(out[ID]).get_indexer(null[ID])
    keep = null_codes >= 0  # genes only in the null are not tested
    nv, nc = finite(null[value][keep], null_codes[keep])
    mean_null, n_null = group_mean(nv, nc, len(out))
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


def run_vs_null(run: Run) -> tuple[pd.DataFrame, dict]:
    """The mode's table and what :func:`ispo.perturb_stats` records about it."""
    value = value_column(run.df, run.goal)
    null_df = side_table(
        run.null,
        "null table",
        "vs_null needs a null table: pass --null NULL.parquet (a run of the same genes on "
        "control cells or a null model)",
        [ID, value],
        f"the null run must have {value}; rerun it with the same options as the test run",
        "rerun the null perturbation with cells and genes in it",
    )
    out = vs_null_table(run.df, null_df, value, fdr_alpha=run.opts.fdr_alpha)
    return out, {"value": value, "goal_state": run.goal}
