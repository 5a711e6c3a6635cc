"""What every input is read through: a :class:`Source` (``obs`` and ``var`` in memory, count
matrices sliced by rows on disk). The openers (:mod:`ispo.io.read` for AnnData files and
``demo:N``, :mod:`ispo.io.dataset` for tokenized dataset folders) build on it; only
:func:`ispo.io.read.open_input` chooses among them.
"""

from __future__ import annotations

import hashlib

import h5py
import pandas as pd
from anndata.io import sparse_dataset

from ispo.errors import IspoError


def h5_attr(elem, key: str):
    """An HDF5/zarr attribute as text (h5py gives bytes for some writers)."""
    value = getattr(elem, "attrs", {}).get(key)
    return value.decode() if isinstance(value, bytes) else value


class Rows:
    """Row-slicing of a stored matrix that names the file when the read fails (truncation)."""

    def __init__(self, m, name: str, where: str) -> None:
        self.m, self.name, self.where = m, name, where
        self.shape = m.shape

    def __getitem__(self, rows: slice):
        try:
            return self.m[rows]
        except IspoError:
            raise
        except Exception as exc:
            raise IspoError(
                f"cannot read rows {rows.start}:{rows.stop} of {self.where} in "
                f"{self.name} ({type(exc).__name__}): is the file complete?"
            ) from exc


class Source:
    """An input opened for reading by rows: ``obs`` and ``var`` in memory, matrices on disk.

    ``matrix(layer)`` is sliceable by rows (``m[a:b]`` gives a SciPy or NumPy block);
    ``copy_to(h5, name)`` writes the element ``name`` (``X``, ``layers``, ``obsm``...) into an
    open HDF5 file as AnnData stores it, without loading large matrices whole. ``spec`` is what
    :func:`open_input` reopens in another process (None: the data lives in this process only).
    """

    spec: str | None = None
    tokenized = False  # True: cells come as tokens (a tokenized dataset), not counts

    def __init__(self, name: str, obs: pd.DataFrame, var: pd.DataFrame) -> None:
        self.name, self.obs, self.var = name, obs, var

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    @property
    def obs_names(self) -> pd.Index:
        return self.obs.index

    def _elem(self, key: str):
        raise NotImplementedError

    def matrix(self, layer: str | None) -> Rows:
        where = "X" if layer is None else f"layers/{layer}"
        elem = self._elem(where)
        if elem is None:
            if layer is None:
                raise IspoError(f"{self.name} has no X: name the layer of raw counts with --layer")
            layers = self._elem("layers")
            have = [] if layers is None else list(layers.keys())
            raise IspoError(
                f"layer {layer!r} not found in {self.name}: available layers are {have}"
            )
        return Rows(self._open_matrix(elem, where), self.name, where)

    def _open_matrix(self, elem, where: str):
        kind = h5_attr(elem, "encoding-type")
        if kind in ("csr_matrix", "csc_matrix"):
            return sparse_dataset(elem)
        if kind in ("array", None) and hasattr(elem, "shape"):
            return elem
        raise IspoError(
            f"{where} of {self.name} is stored as {kind!r}: give a dense or sparse count matrix"
        )

    def copy_to(self, h5: h5py.File, name: str) -> None:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Content hash of the cell and gene names and the shape (what resume checks)."""
        h = hashlib.sha1()
        for names in (self.obs.index, self.var.index):
            h.update(str(len(names)).encode())
            h.update("\0".join(map(str, names)).encode())
        return h.hexdigest()

    def close(self) -> None:
        pass

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
