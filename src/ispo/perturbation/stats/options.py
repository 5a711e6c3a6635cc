"""The options of :func:`ispo.perturb_stats`, checked once, and what a mode works on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from ispo.errors import IspoError
from ispo.settings import Choice

Mode = Literal[
    "aggregate",
    "goal_state_shift",
    "vs_null",
    "mixture_model",
    "aggregate_gene_shifts",
    "class_prob",
]
MODES = (
    "aggregate",
    "goal_state_shift",
    "vs_null",
    "mixture_model",
    "aggregate_gene_shifts",
    "class_prob",
)
#: Geneformer's name for a mode -> ours.
MODE_ALIASES = {"aggregate_data": "aggregate"}


class Method(Choice):
    """How ``goal_state_shift`` tests genes (see its module, ``stats/goal_state_shift.py``)."""

    PAIRED = "paired"
    GENEFORMER = "geneformer"


class Columns(Choice):
    """Output column names: ispo's, or those of Geneformer's ``InSilicoPerturberStats``."""

    ISPO = "ispo"
    GENEFORMER = "geneformer"


@dataclass(frozen=True)
class StatsOptions:
    """The options of :func:`ispo.perturb_stats` after validation (see its parameters)."""

    method: Method = Method.PAIRED
    fdr_alpha: float = 0.05
    min_cells: int = 10
    max_background: int = 100_000
    seed: int = 0
    n_components: int = 2


def check_options(
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


@dataclass
class Run:
    """What one mode works on: the results, the states tested, the extra tables, the options."""

    df: pd.DataFrame
    goal: str | None
    alts: list[str]
    null: pd.DataFrame | str | os.PathLike | None
    gene_table: pd.DataFrame | str | os.PathLike | None
    opts: StatsOptions
