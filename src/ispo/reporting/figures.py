"""The report's figures: copied from the results under unique names, or drawn here (bar charts
of throughput, speedup and hits; the tuning trials) where a result has none of its own."""

from __future__ import annotations

import shutil
from pathlib import Path

from ispo.reporting.sections import Image


class Figures:
    """The report's ``figures/`` folder: every figure under a unique name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.used: set[str] = set()

    def name(self, stem: str) -> Path:
        """A new, unused ``figures/<stem>.png`` path."""
        base = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem) or "figure"
        name, i = f"{base}.png", 1
        while name in self.used:
            i += 1
            name = f"{base}-{i}.png"
        self.used.add(name)
        (self.root / "figures").mkdir(exist_ok=True)
        return self.root / "figures" / name

    def image(self, path: Path, alt: str) -> Image:
        """A figure written at ``path`` (from :meth:`name`), as the report shows it."""
        return Image(f"figures/{path.name}", alt)

    def copy(self, src: Path, stem: str, alt: str) -> Image | None:
        """A result's own PNG copied into the report (None when it has none)."""
        if not src.is_file():
            return None
        dest = self.name(stem)
        shutil.copyfile(src, dest)
        return self.image(dest, alt)


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def bar_png(path: Path, labels: list[str], values: list[float], xlabel: str, title: str) -> Path:
    """A horizontal bar chart, one bar per label."""
    fig = _new_figure(7.5, max(2.0, 0.35 * len(labels) + 1.2))
    ax = fig.add_subplot()
    ax.barh(range(len(labels)), values, color="#2c7fb8")
    ax.set_yticks(range(len(labels)), labels, fontsize="small")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def trials_png(path: Path, trials: list[dict], min_cosine: float | None) -> Path:
    """Throughput of each tuning trial, the feasible ones in colour."""
    fig = _new_figure(7.5, 3.8)
    ax = fig.add_subplot()
    for feasible, colour, name in ((True, "#2ca02c", "feasible"), (False, "#bbbbbb", "infeasible")):
        pts = [t for t in trials if bool(t.get("feasible")) == feasible]
        if pts:
            ax.scatter(
                [t["number"] for t in pts],
                [t["cells_per_s"] for t in pts],
                color=colour,
                label=name,
                s=30,
            )
    ax.set_xlabel("trial")
    ax.set_ylabel("cells/s (steady state)")
    ax.set_title(
        "Tuning trials"
        + (f" (feasible: mean cosine >= {min_cosine})" if min_cosine is not None else "")
    )
    ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
