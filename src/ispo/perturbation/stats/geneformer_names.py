"""Geneformer's column names: a :func:`ispo.perturb_stats` table renamed (and, for Geneformer's
tests, ordered) as Geneformer's ``InSilicoPerturberStats`` writes it (``columns="geneformer"``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ispo.perturbation.stats.inputs import ID, SYMBOL
from ispo.perturbation.stats.options import Columns, Method

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
    # no Geneformer counterpart: only the gene columns are renamed
    "class_prob": {SYMBOL: "Gene_name", ID: "Ensembl_ID"},
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
