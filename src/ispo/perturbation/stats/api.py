"""The public entry of the statistics: :func:`perturb_stats` runs one mode on a results table,
:func:`write_stats` writes its table."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import pandas as pd

from ispo.errors import IspoError
from ispo.io.write import replacing
from ispo.perturbation.stats.aggregate import run_aggregate
from ispo.perturbation.stats.aggregate_gene_shifts import run_aggregate_gene_shifts
from ispo.perturbation.stats.class_prob import run_class_prob
from ispo.perturbation.stats.geneformer_names import geneformer_columns
from ispo.perturbation.stats.goal_state_shift import run_goal_state_shift
from ispo.perturbation.stats.inputs import results_table, states
from ispo.perturbation.stats.mixture_model import run_mixture_model
from ispo.perturbation.stats.options import (
    MODE_ALIASES,
    MODES,
    Columns,
    Mode,
    Run,
    check_options,
)
from ispo.perturbation.stats.vs_null import run_vs_null

#: Each mode's runner: its table and what :func:`perturb_stats` records about it.
RUNNERS: dict[str, Callable[[Run], tuple[pd.DataFrame, dict]]] = {
    "aggregate": run_aggregate,
    "goal_state_shift": run_goal_state_shift,
    "vs_null": run_vs_null,
    "mixture_model": run_mixture_model,
    "aggregate_gene_shifts": run_aggregate_gene_shifts,
    "class_prob": run_class_prob,
}


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
        One of :data:`MODES` (each has its module in this package); Geneformer's
        ``aggregate_data`` too.
    goal_state, alt_states
        States whose ``shift_<state>`` are tested (default: the run's; ``alt_states=[]``: none);
        ``class_prob``: the goal class (a name of the checkpoint's ``id2label``).
    null, gene_table
        ``vs_null``: a null run's results; ``aggregate_gene_shifts``: the
        ``emb_mode="cell_and_gene"`` table (tables or paths).
    fdr_alpha
        Significant below this Benjamini-Hochberg FDR.
    max_background, seed, n_components
        ``method="geneformer"``: the pooled background is a seeded subsample of at most
        ``max_background``; ``mixture_model``: ``n_components`` Gaussians seeded with ``seed``.
    method
        ``goal_state_shift``: ``"paired"`` (mean shift above zero and more than the cell's other
        genes, one FDR over toward and away calls) or ``"geneformer"`` (Geneformer's test, to
        reproduce Geneformer analyses). ``class_prob`` always uses the paired test.
    min_cells
        Paired test: genes seen in fewer cells are reported, not tested nor counted.
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
    opts = check_options(method, fdr_alpha, min_cells, max_background, seed, n_components)
    names = Columns.parse(columns, "columns")
    df = results_table(results)
    goal, alts = states(df, goal_state, alt_states)
    out, extra = RUNNERS[mode](Run(df, goal, alts, null, gene_table, opts))
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
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise IspoError(f"output folder {parent} does not exist: create it first")
    with replacing(out) as tmp:
        if suffix in (".csv", ".tsv"):
            df.to_csv(tmp, index=False, sep="," if suffix == ".csv" else "\t")
        else:
            df.to_parquet(tmp, index=False)
    return out
