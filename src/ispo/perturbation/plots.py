"""The plots of perturbation statistics: the volcano plot of a goal-state test (which
perturbations move cells toward the goal) and the bar chart of the top hits.

Volcano: one point per tested gene, its mean shift toward the goal (x) against -log10 of its FDR
(y). Genes called toward the goal are green, those called away orange, the rest grey; the
strongest of each are labelled. It reads a table of :func:`ispo.perturbation.stats.perturb_stats`
(``mode="goal_state_shift"``, either method, with ispo's or Geneformer's column names, or
``mode="class_prob"``). Every plot of a run with random weights says so on its face.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ispo.errors import IspoError

TOWARD, AWAY, OTHER = "#1a9850", "#e66101", "#b0b0b0"
RANDOM_NOTE = "RANDOM WEIGHTS: a speed/plumbing run, not biology"
#: The x column of a paired table: the mean shift (either column names), or the mean change of
#: the goal class's probability (``class_prob``); and its axis label.
PAIRED_X = {
    "shift_to_goal": "mean shift toward the goal",
    "Shift_to_goal_end": "mean shift toward the goal",
    "delta_prob_goal": "mean change of the goal class's probability",
}


def _column(stats: pd.DataFrame, *names: str) -> str | None:
    return next((n for n in names if n in stats.columns), None)


def volcano_points(stats: pd.DataFrame) -> pd.DataFrame:
    """``symbol``, ``x`` (effect toward the goal), ``y`` (-log10 FDR), ``side`` of tested genes.

    ``paired`` tables (and ``class_prob``): x is the mean shift (the mean change of the goal
    class's probability), y the FDR of the gene's call, side ``toward``/``away`` from the
    ``toward_goal``/``away_from_goal`` calls. ``geneformer`` tables: x is the mean shift, y its
    two-sided FDR, side the sign of significant genes. Genes not tested are left out.
    """
    symbol = _column(stats, "perturbed_symbols", "Gene_name")
    if symbol is None:
        raise IspoError("stats table has no gene symbols: pass a table written by perturb-stats")
    x_col = _column(stats, *PAIRED_X)
    if "goal_call_fdr" in stats.columns and x_col is not None:
        x = stats[x_col].to_numpy(np.float64)
        fdr = stats["goal_call_fdr"].to_numpy(np.float64)
        toward = stats["toward_goal"].to_numpy(bool)
        away = stats["away_from_goal"].to_numpy(bool)
    else:
        shift = _column(stats, "shift_to_goal", "Shift_to_goal_end")
        q = _column(stats, "goal_fdr", "Goal_end_FDR")
        if shift is None or q is None:
            raise IspoError(
                "stats table has no goal-state columns: pass the output of perturb-stats "
                "--mode goal_state_shift"
            )
        x = stats[shift].to_numpy(np.float64)
        fdr = stats[q].to_numpy(np.float64)
        sig = stats[_column(stats, "significant", "Sig")].to_numpy(bool)
        toward, away = sig & (x > 0), sig & (x < 0)
    side = np.where(toward, "toward", np.where(away, "away", ""))
    pts = pd.DataFrame(
        {
            "symbol": stats[symbol].astype(str).to_numpy(),
            "x": x,
            "y": -np.log10(np.clip(fdr, 1e-300, 1.0)),
            "side": side,
        }
    )
    return pts[~np.isnan(fdr) & ~np.isnan(x)].reset_index(drop=True)


def _label_top(ax, pts: pd.DataFrame, side: str, n: int, colour: str) -> None:
    """Label the ``n`` genes of one side with the smallest FDR (largest effect on ties).

    Labels stand in a column beside the points (right of them for ``toward``, left for
    ``away``), spaced so that they never overlap, each joined to its point by a thin line.
    """
    sel = pts[pts["side"] == side].assign(strength=lambda d: d["x"].abs())
    sel = sel.sort_values(["y", "strength"], ascending=False).head(n)
    if sel.empty:
        return
    x_lo, x_hi = pts["x"].min(), pts["x"].max()
    span = max(x_hi - x_lo, 1e-12)
    gap = 0.055 * max(pts["y"].max(), 1.0)
    x_text = x_hi + 0.06 * span if side == "toward" else x_lo - 0.06 * span
    y_text = sel["y"].to_numpy().copy()
    for i in range(1, len(y_text)):
        y_text[i] = min(y_text[i], y_text[i - 1] - gap)
    for (x, y, name), yt in zip(sel[["x", "y", "symbol"]].itertuples(index=False), y_text):
        ax.annotate(
            name,
            (x, y),
            xytext=(x_text, yt),
            ha="left" if side == "toward" else "right",
            va="center",
            fontsize="x-small",
            color=colour,
            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": colour, "shrinkB": 2},
        )


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _note_random(fig, random_init: bool) -> None:
    """The random-weights note on the figure's face when it applies."""
    if random_init:
        fig.text(0.01, 0.01, RANDOM_NOTE, color="#b2182b", fontsize="small", weight="bold")


def _save(fig, path: str | Path) -> Path:
    """Write the figure as a PNG atomically (a temporary file renamed over ``path``)."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _title(info: dict, untested: int) -> str:
    what = "goal class" if info.get("mode") == "class_prob" else "goal state"
    return (
        f"Perturbations vs {what} {info.get('goal_state', 'goal')!r} "
        f"({info.get('method', 'paired')} test"
        + (f"; {untested} genes not tested" if untested else "")
        + ")"
    )


def _no_points(fig, stats: pd.DataFrame, info: dict) -> None:
    """Say in the plot why there is nothing to plot, instead of an empty meaningless axis."""
    ax = fig.add_subplot()
    ax.set_axis_off()
    min_cells = info.get("min_cells")
    why = (
        f"every one of the {len(stats):,} genes was seen in fewer than {min_cells} cells "
        "(--min-cells)"
        if min_cells is not None
        else "no gene has a p-value"
    )
    ax.text(0.5, 0.5, f"No gene tested:\n{why}", ha="center", va="center", wrap=True)
    ax.set_title(_title(info, len(stats)), fontsize="medium")


def volcano_figure(stats: pd.DataFrame, *, top: int = 10, title: str | None = None):
    """The volcano plot of a goal-state stats table (a matplotlib ``Figure``).

    The ``top`` toward-goal genes (and half as many away-from-goal genes) are labelled; the
    dashed line is the FDR threshold the table was made with (``attrs``, else 0.05). With no
    gene tested the plot says so and why (:func:`volcano_empty` tells the caller).
    """
    pts = volcano_points(stats)
    info = stats.attrs.get("ispo_stats", {})
    alpha = float(info.get("fdr_alpha", 0.05))
    fig = _figure(7.5, 5.5)
    _note_random(fig, bool(info.get("random_init")))
    if pts.empty:
        _no_points(fig, stats, info)
        return fig
    ax = fig.add_subplot()
    for side, colour, label in (
        ("", OTHER, "not significant"),
        ("away", AWAY, "away from the goal"),
        ("toward", TOWARD, "toward the goal"),
    ):
        sel = pts[pts["side"] == side]
        ax.scatter(sel["x"], sel["y"], s=12, color=colour, label=f"{label} ({len(sel)})")
    ax.axhline(-np.log10(alpha), color="#666666", lw=0.8, ls="--")
    ax.axvline(0.0, color="#666666", lw=0.8)
    _label_top(ax, pts, "toward", top, TOWARD)
    _label_top(ax, pts, "away", max(1, top // 2), AWAY)
    x_col = _column(stats, *PAIRED_X)
    ax.set_xlabel(PAIRED_X[x_col] if x_col else "mean shift toward the goal")
    ax.set_ylabel(f"-log10 FDR (dashed: FDR {alpha:g})")
    ax.set_title(title or _title(info, len(stats) - len(pts)), fontsize="medium")
    x_lo, x_hi = pts["x"].min(), pts["x"].max()
    pad = 0.3 * max(x_hi - x_lo, 1e-12)
    ax.set_xlim(x_lo - pad, x_hi + pad)  # room for the label columns
    ax.legend(
        frameon=False, fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3
    )
    fig.tight_layout()
    return fig


def volcano_png(
    stats: pd.DataFrame, path: str | Path, *, top: int = 10, title: str | None = None
) -> Path:
    """Write :func:`volcano_figure` as a PNG and return its path."""
    return _save(volcano_figure(stats, top=top, title=title), path)


def volcano_empty(stats: pd.DataFrame) -> bool:
    """True when no gene of the table was tested (its volcano plot says so instead of points)."""
    return volcano_points(stats).empty


def hits_figure(aggregate: pd.DataFrame, *, top: int = 10, random_init: bool = False):
    """Bar chart of the ``top`` genes of an ``aggregate`` table: 1 - mean cosine, strongest on
    top, with the random-weights note when the run had random weights (a ``Figure``)."""
    rows = aggregate.head(top)
    labels = [str(s) for s in rows["perturbed_symbols"]][::-1]
    values = [1.0 - float(v) for v in rows["cos_sim_mean"]][::-1]
    fig = _figure(7.5, max(2.0, 0.35 * len(labels) + 1.2))
    ax = fig.add_subplot()
    ax.barh(range(len(labels)), values, color="#2c7fb8")
    ax.set_yticks(range(len(labels)), labels, fontsize="small")
    ax.set_xlabel("1 - mean cosine (embedding change)")
    ax.set_title("Top perturbation hits" + (" [random weights]" if random_init else ""))
    fig.tight_layout(rect=(0, 0.05 if random_init else 0, 1, 1))
    _note_random(fig, random_init)
    return fig


def hits_png(
    aggregate: pd.DataFrame, path: str | Path, *, top: int = 10, random_init: bool = False
) -> Path:
    """Write :func:`hits_figure` as a PNG and return its path."""
    return _save(hits_figure(aggregate, top=top, random_init=random_init), path)
