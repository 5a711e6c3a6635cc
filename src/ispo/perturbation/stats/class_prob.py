"""``class_prob``: which deletions move cells toward the goal class of a fine-tuned classifier.

With a checkpoint that has a sequence-classification head, ``ispo perturb`` writes per row each
class's probability after the perturbation (``prob_<class>``), its change from the unperturbed
cell (``delta_prob_<class>``), the predicted class after (``pred_class``) and before
(``orig_pred_class``); class names are the checkpoint's ``id2label``. Per gene, over the cells
that detect it:

- ``delta_prob_goal``: the mean change of the goal class's probability, with its 95% interval;
- ``flip_to_goal_share``: of the cells not predicted as the goal before the perturbation
  (``n_not_goal_before``), the share predicted as the goal after it (``n_flipped_to_goal``);
- the ``paired`` test of ``goal_state_shift`` (:mod:`ispo.perturbation.stats.paired`) on the
  probability change: ``toward_goal`` when the mean change is above zero and the gene raises
  the goal probability more than the cell's other genes do, one FDR over both directions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ispo.errors import IspoError
from ispo.perturbation.stats.inputs import ID, cell_codes, gene_codes, require
from ispo.perturbation.stats.options import Method, Run
from ispo.perturbation.stats.paired import (
    PAIRED_TEST,
    calls_first,
    check_comparable,
    paired_columns,
)

PREDICTIONS = ("pred_class", "orig_pred_class")


def _classes(df: pd.DataFrame) -> list[str]:
    """The class names the table has ``delta_prob_<class>`` columns for."""
    return [c[len("delta_prob_") :] for c in df.columns if c.startswith("delta_prob_")]


def _delta_column(df: pd.DataFrame, goal: str | None) -> str:
    """``delta_prob_<goal>``, checked present; the errors name the classes the run has."""
    classes = _classes(df)
    if not classes:
        raise IspoError(
            "results table has no delta_prob_<class> columns: run ispo perturb with a "
            "checkpoint that has a sequence-classification head (a fine-tuned classifier)"
        )
    if goal is None:
        raise IspoError(
            f"class_prob needs the goal class: pass --goal-state with one of {', '.join(classes)}"
        )
    if f"delta_prob_{goal}" not in df.columns:
        raise IspoError(
            f"results table has no column delta_prob_{goal} for goal class {goal!r} (classes: "
            f"{', '.join(classes)}): pass --goal-state with one of those classes"
        )
    return f"delta_prob_{goal}"


def _flips(df: pd.DataFrame, codes: np.ndarray, n_genes: int, goal: str) -> dict[str, np.ndarray]:
    """Per gene: cells not predicted as the goal before, those predicted as it after, share."""
    before_other = df["orig_pred_class"].astype(str).to_numpy() != goal
    after_goal = df["pred_class"].astype(str).to_numpy() == goal
    n_other = np.bincount(codes, weights=before_other, minlength=n_genes)
    n_flip = np.bincount(codes, weights=before_other & after_goal, minlength=n_genes)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(n_other > 0, n_flip / n_other, np.nan)
    return {
        "n_not_goal_before": n_other.astype(np.int64),
        "n_flipped_to_goal": n_flip.astype(np.int64),
        "flip_to_goal_share": share,
    }


def run_class_prob(run: Run) -> tuple[pd.DataFrame, dict]:
    """The mode's table and what :func:`ispo.perturb_stats` records about it."""
    if run.opts.method is Method.GENEFORMER:
        raise IspoError("class_prob has only the paired test: leave out --method geneformer")
    df = run.df
    col = _delta_column(df, run.goal)
    require(df, PREDICTIONS, "results table", "run ispo perturb with a classifier checkpoint")
    codes, out = gene_codes(df)
    cells = cell_codes(df)
    v = df[col].to_numpy(dtype=np.float64)
    ok = ~np.isnan(v)
    if not ok.any():
        raise IspoError(f"column {col} holds no values: rerun ispo perturb, unedited")
    o = run.opts
    columns, n, tested = paired_columns(
        v[ok],
        codes[ok],
        cells[ok],
        len(out),
        state="goal",
        value_name="delta_prob_goal",
        fdr_alpha=o.fdr_alpha,
        min_cells=o.min_cells,
    )
    out = out.assign(**columns, n_detections=n, tested=tested)
    out = out.assign(**_flips(df, codes, len(out), str(run.goal)))
    check_comparable(out, "goal")
    info = {
        "value": col,
        "goal_state": run.goal,
        "classes": _classes(df),
        "test": PAIRED_TEST,
        "min_cells": o.min_cells,
        "n_tested": int(out["tested"].sum()),
        "n_untested": int((~out["tested"]).sum()),
    }
    return calls_first(out, "goal", ID), info
