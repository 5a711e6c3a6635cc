"""``aggregate_gene_shifts``: per (perturbed, affected) gene pair, the mean, std and number of
cells of ``cos_sim`` from the gene table of an ``emb_mode="cell_and_gene"`` run."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ispo.perturbation.stats.inputs import ID, SYMBOL, side_table
from ispo.perturbation.stats.options import Run

GENE_TABLE_COLUMNS = (ID, "affected_id", "affected_symbol", "cos_sim")


def gene_shifts_table(df: pd.DataFrame, genes: pd.DataFrame) -> pd.DataFrame:
    """One row per (perturbed, affected) gene pair, lowest mean ``cos_sim`` first."""
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


def run_aggregate_gene_shifts(run: Run) -> tuple[pd.DataFrame, dict]:
    """The mode's table and what :func:`ispo.perturb_stats` records about it."""
    genes = side_table(
        run.gene_table,
        "gene table",
        "aggregate_gene_shifts needs the gene table: pass --gene-table GENES.parquet from a "
        "run with emb_mode='cell_and_gene'",
        GENE_TABLE_COLUMNS,
        "pass the per-affected-gene table of a run with emb_mode='cell_and_gene'",
        "rerun ispo perturb with emb_mode='cell_and_gene'",
    )
    return gene_shifts_table(run.df, genes), {"value": "cos_sim"}
