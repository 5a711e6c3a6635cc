"""PNG figures for embedding reports: a 2-D scatter coloured by label and a confusion heatmap.

Figures are drawn with matplotlib's object-oriented API on an Agg canvas rather than through
``pyplot``, so they work on headless machines and never touch a user's global backend or
open figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.decomposition import PCA

from ispo.errors import IspoError

#: Up to this many labels get a distinct qualitative colour and a legend entry.
MAX_LEGEND_LABELS = 20
#: Up to this many classes get their count written in each confusion-matrix cell.
MAX_ANNOTATED_CLASSES = 30


def plot_embedding(X: np.ndarray, labels: Sequence, path: str | Path, *, title: str = "") -> Path:
    """Save a 2-D scatter of the embedding, one colour per label, as a PNG.

    UMAP is used when ``umap-learn`` is installed because it shows local neighbourhoods;
    otherwise PCA, which needs nothing extra and is deterministic. The method used is written
    in the title so a reader knows how to interpret distances.

    Parameters
    ----------
    X
        Embedding, shape ``(n_cells, dim)``; rows with NaN or infinity are left out.
    labels
        One label per row of ``X`` (compared as strings).
    path
        Output PNG file; missing parent directories are created.
    title
        Text placed before the projection method in the figure title.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    IspoError
        If ``X`` is not 2-D, lengths differ, or fewer than 2 finite cells remain.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray([str(v) for v in labels])
    if X.ndim != 2 or X.shape[0] != len(y):
        raise IspoError(
            f"embedding of shape {X.shape} does not match {len(y)} labels; "
            "pass a 2-D embedding with one label per row"
        )
    finite = np.isfinite(X).all(axis=1)
    X, y = X[finite], y[finite]
    if X.shape[0] < 2:
        raise IspoError("need at least 2 cells without NaN to plot an embedding")

    coords, method, axis_names = _project_2d(X)
    classes = np.unique(y)
    cmap_name = "tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo"

    fig = Figure(figsize=(7, 6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps[cmap_name]
    point_size = float(np.clip(4000 / len(y), 2, 30))
    for i, c in enumerate(classes):
        colour = cmap(i if len(classes) <= 20 else i / max(len(classes) - 1, 1))
        sel = y == c
        ax.scatter(
            coords[sel, 0],
            coords[sel, 1],
            s=point_size,
            color=colour,
            label=c,
            alpha=0.7,
            linewidths=0,
        )
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(f"{title} ({method})" if title else method)
    if len(classes) <= MAX_LEGEND_LABELS:
        ax.legend(markerscale=max(1.0, 30 / point_size) ** 0.5, fontsize="small", frameon=False)
    return _save(fig, path)


def plot_confusion(
    cm: np.ndarray | Sequence[Sequence[int]],
    classes: Sequence,
    path: str | Path,
    *,
    title: str = "confusion matrix",
) -> Path:
    """Save a confusion-matrix heatmap (rows = true label, columns = predicted) as a PNG.

    Colour is the row-normalised fraction so that rare labels are as readable as common ones;
    the raw counts are written in the cells when there are few enough classes.

    Parameters
    ----------
    cm
        Square count matrix, e.g. ``evaluate_embedding(...)["classification"]["confusion_matrix"]``.
    classes
        Class names in the matrix's row/column order.
    path
        Output PNG file; missing parent directories are created.
    title
        The figure's title.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    IspoError
        If ``cm`` is not square with one row per class.
    """
    cm = np.asarray(cm, dtype=np.float64)
    names = [str(c) for c in classes]
    if cm.ndim != 2 or cm.shape != (len(names), len(names)):
        raise IspoError(
            f"confusion matrix of shape {cm.shape} does not match {len(names)} classes; "
            "pass the square matrix and the class list from the same evaluation"
        )
    row_sums = cm.sum(axis=1, keepdims=True)
    fractions = np.divide(cm, row_sums, out=np.zeros_like(cm), where=row_sums > 0)

    side = float(np.clip(0.5 * len(names) + 2.5, 4, 16))
    fig = Figure(figsize=(side + 1, side), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true label")
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=45, ha="right")
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= MAX_ANNOTATED_CLASSES:
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(
                    j,
                    i,
                    f"{int(cm[i, j])}",
                    ha="center",
                    va="center",
                    fontsize="small",
                    color="white" if fractions[i, j] > 0.5 else "black",
                )
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def _project_2d(X: np.ndarray) -> tuple[np.ndarray, str, tuple[str, str]]:
    """Two coordinates per cell: UMAP when importable, else PCA with explained variance."""
    try:
        import umap
    except ImportError:
        umap = None
    if umap is not None and X.shape[0] > 15:
        coords = umap.UMAP(n_components=2, random_state=0).fit_transform(X)
        return coords, "UMAP", ("UMAP 1", "UMAP 2")
    n_components = min(2, X.shape[1])
    pca = PCA(n_components=n_components, random_state=0).fit(X)
    coords = pca.transform(X)
    if n_components == 1:
        coords = np.column_stack([coords[:, 0], np.zeros(len(coords))])
    variance = list(pca.explained_variance_ratio_) + [0.0]
    return coords, "PCA", (f"PC1 ({variance[0]:.0%})", f"PC2 ({variance[1]:.0%})")


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG to ``path``, creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
