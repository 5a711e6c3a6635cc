"""Reading AnnData inputs in chunks of cells, so large (backed) files never sit in memory whole."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from ispo.errors import IspoError


def read_input(source: str | Path | ad.AnnData, *, backed: bool = True) -> ad.AnnData:
    """An AnnData from a path (opened backed, read-only, by default) or the object itself."""
    if isinstance(source, ad.AnnData):
        return source
    path = Path(source)
    if not path.exists():
        raise IspoError(f"input {path} does not exist: give an .h5ad (or .zarr) file of raw counts")
    try:
        if path.suffix == ".zarr" or path.is_dir():
            return ad.read_zarr(path)
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as exc:
        raise IspoError(
            f"cannot read {path} ({type(exc).__name__}: {str(exc)[:120]}): is it a "
            "complete .h5ad/.zarr file?"
        ) from exc


def _matrix(adata: ad.AnnData, layer: str | None):
    if layer is None:
        if adata.X is None:
            raise IspoError("the AnnData has no X: name the layer of raw counts with --layer")
        return adata.X
    if layer not in adata.layers:
        raise IspoError(f"layer {layer!r} not found: available layers are {list(adata.layers)}")
    return adata.layers[layer]


def iter_count_chunks(
    adata: ad.AnnData, *, layer: str | None = None, chunk_size: int = 4096
) -> Iterator[tuple[int, sp.csr_matrix]]:
    """Yield ``(first_row, csr_chunk)`` over the cells, reading one chunk at a time."""
    mat = _matrix(adata, layer)
    n = adata.n_obs
    for start in range(0, n, chunk_size):
        block = mat[start : min(start + chunk_size, n)]
        if hasattr(block, "to_memory"):
            block = block.to_memory()
        block = sp.csr_matrix(block) if not sp.issparse(block) else block.tocsr()
        block.sum_duplicates()  # a count may be stored as several entries; ranks need the sum
        yield start, block


def obs_column(adata: ad.AnnData, key: str) -> np.ndarray | None:
    """A column of ``obs`` as an array, or None when it is absent."""
    return adata.obs[key].to_numpy() if key in adata.obs.columns else None
