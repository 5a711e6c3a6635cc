"""The embedding plot of ``ispo embed --plot LABEL`` (Geneformer's ``EmbExtractor.plot_embs``
with ``plot_style="umap"``): the embedded cells in two dimensions, coloured by an ``obs`` label.

UMAP when ``umap-learn`` is installed (``pip install 'ispo[plot]'``), else PCA; the figure's
title says which (:func:`ispo.evaluation.plots.plot_embedding`, the one scatter ispo draws). As in
Geneformer at most ``max_cells`` cells are drawn (1,000 by default), chosen with the same seeded
draw as ``--max-ncells`` (:func:`ispo.io.select.sample`).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from anndata.io import read_elem

from ispo.errors import IspoError
from ispo.evaluation.plots import plot_embedding
from ispo.io.select import sample

MAX_CELLS_TO_PLOT = 1000  # Geneformer's max_ncells_to_plot


def plot_path(out: Path, label: str) -> Path:
    """Where the plot of ``out`` coloured by ``label`` goes: ``OUT.umap_<label>.png``."""
    return out.with_name(f"{out.stem}.umap_{label}.png")


def plot_output(out: str | Path, key: str, label: str, max_cells: int = MAX_CELLS_TO_PLOT) -> Path:
    """Plot the embedded cells of an ``ispo embed`` output; returns the PNG written."""
    out = Path(out)
    with h5py.File(out, "r") as h5:
        obs = read_elem(h5["obs"])
        if label not in obs.columns:
            raise IspoError(
                f"--plot {label!r} is not an obs column: choose one of {list(obs.columns)[:10]}"
            )
        rows = sample(np.flatnonzero(obs["geneformer_embedded"].to_numpy(bool)), max_cells)
        emb = h5["obsm"][key][rows] if len(rows) else np.zeros((0, 0))
    labels = obs[label].astype(str).to_numpy()[rows]
    return plot_embedding(emb, labels, plot_path(out, label), title=f"{out.name}: {label}")
