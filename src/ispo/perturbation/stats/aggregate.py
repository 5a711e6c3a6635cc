"""``aggregate`` (Geneformer's ``aggregate_data``): per perturbed gene, the mean, median and std
of ``cos_sim`` (lower = stronger effect), the mean ``cell_cos_sim`` and of each
``shift_<state>``, and the number of cells."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ispo.perturbation.stats.inputs import FIX, ID, SYMBOL, require
from ispo.perturbation.stats.options import Run


def aggregate_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per perturbed gene, lowest mean ``cos_sim`` (strongest effect) first."""
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


def run_aggregate(run: Run) -> tuple[pd.DataFrame, dict]:
    """The mode's table and what :func:`ispo.perturb_stats` records about it."""
    require(run.df, ["cos_sim"], "results table", FIX)
    return aggregate_table(run.df), {"value": "cos_sim"}
