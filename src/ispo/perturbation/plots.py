"""The volcano plot of a goal-state test: which perturbations move cells toward the goal.

One point per tested gene: its effect toward the goal (x) against -log10 of its FDR (y). Genes
that move cells toward the goal are green on the right, those that move them away orange on the
left, the rest grey; the strongest of each are labelled. It reads a table of
:func:`ispo.perturbation.stats.perturb_stats` (``mode="goal_state_shift"``, either method, with
ispo's or Geneformer's column names).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ispo.errors import IspoError

TOWARD, AWAY, OTHER = "#1a9850", "#e66101", "#b0b0b0"
RANDOM_NOTE = "RANDOM WEIGHTS: a speed/plumbing run, not biology"
PAIRED_X = " (shift minus the cell's median shift)"


def _column(stats: pd.DataFrame, *names: str) -> str | None:
    return next((n for n in names if n in stats.columns), None)


def volcano_points(stats: pd.DataFrame) -> pd.DataFrame:
    """``symbol``, ``x`` (effect toward the goal), ``y`` (-log10 FDR), ``side`` of tested genes.

    ``paired`` tables: x is the within-cell centred effect, y the FDR of the direction the gene
    is significant in (else the smaller of the two), side ``toward``/``away`` from the
    ``toward_goal``/``away_from_goal`` calls. ``geneformer`` tables: x is the mean shift, y its
    two-sided FDR, side the sign of significant genes. Genes not tested are left out.
    """
    symbol = _column(stats, "perturbed_symbols", "Gene_name")
    if symbol is None:
        raise IspoError("stats table has no gene symbols: pass a table written by perturb-stats")
    if "goal_effect" in stats.columns:
        x = stats["goal_effect"].to_numpy(np.float64)
        fdr = np.fmin(stats["goal_toward_fdr"], stats["goal_away_fdr"]).to_numpy(np.float64)
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


def volcano_png(
    stats: pd.DataFrame, path: str | Path, *, top: int = 10, title: str | None = None
) -> Path:
    """Write the volcano plot of a goal-state stats table as a PNG and return its path.

    The ``top`` toward-goal genes (and half as many away-from-goal genes) are labelled; the
    dashed line is the FDR threshold the table was made with (``attrs``, else 0.05).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = volcano_points(stats)
    info = stats.attrs.get("ispo_stats", {})
    alpha = float(info.get("fdr_alpha", 0.05))
    fig = Figure(figsize=(7.5, 5.5), dpi=110)
    FigureCanvasAgg(fig)
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
    paired = "goal_effect" in stats.columns
    ax.set_xlabel(f"{'effect' if paired else 'mean shift'} toward the goal{PAIRED_X * paired}")
    ax.set_ylabel(f"-log10 FDR (dashed: FDR {alpha:g})")
    untested = len(stats) - len(pts)
    goal = info.get("goal_state", "goal")
    ax.set_title(
        title
        or f"Perturbations vs goal state {goal!r} ({info.get('method', 'paired')} test"
        + (f"; {untested} genes not tested" if untested else "")
        + ")",
        fontsize="medium",
    )
    x_lo, x_hi = (pts["x"].min(), pts["x"].max()) if len(pts) else (-1.0, 1.0)
    pad = 0.3 * max(x_hi - x_lo, 1e-12)
    ax.set_xlim(x_lo - pad, x_hi + pad)  # room for the label columns
    if info.get("random_init"):
        fig.text(0.01, 0.01, RANDOM_NOTE, color="#b2182b", fontsize="small", weight="bold")
    ax.legend(
        frameon=False, fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3
    )
    fig.tight_layout()
    out = Path(path)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
