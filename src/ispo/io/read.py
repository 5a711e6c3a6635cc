"""One way in: :func:`open_input` opens every input (a path, ``.zarr``, ``demo:N``, an AnnData).

Every command and the API read through a :class:`Source`: ``obs`` and ``var`` in memory, the
count matrices left on disk and read by rows, so a large file never sits in memory whole (the
tokenizer takes a Source; an AnnData given to the API is wrapped in one). :func:`read_input`
gives the whole AnnData to the few commands that need it (tune, bench-isp). A Source opened from
a path can be reopened by name in another process (:attr:`Source.spec`): what the tokenizer
workers of ``ispo embed --workers`` do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import read_elem, sparse_dataset, write_elem

from ispo.errors import IspoError
from ispo.io.dataset import DatasetSource, is_dataset
from ispo.io.source import Source
from ispo.io.vocab import Vocab, load_vocab

COPY_ROWS = 4096  # rows copied at a time when a matrix is rewritten element by element
NO_VOCAB = "--vocab DIR is required: the Geneformer dictionaries of the model"


def _unreadable(path: Path, exc: Exception, what: str = "a complete .h5ad file") -> IspoError:
    detail = " ".join(str(exc).split())[:120]
    return IspoError(
        f"cannot read {path} ({type(exc).__name__}: {detail}): it is not {what} (damaged or "
        "cut short?); copy or write it again"
    )


class H5adSource(Source):
    def __init__(self, path: Path) -> None:
        self.spec = str(path)
        try:
            self.h5 = h5py.File(path, "r")
        except Exception as exc:
            raise _unreadable(path, exc) from exc
        try:
            obs, var = read_elem(self.h5["obs"]), read_elem(self.h5["var"])
        except Exception as exc:
            self.h5.close()
            raise IspoError(
                f"cannot read obs/var of {path} ({type(exc).__name__}): is it a "
                "complete .h5ad file?"
            ) from exc
        super().__init__(str(path), obs, var)

    def _elem(self, key: str):
        return self.h5.get(key)

    def copy_to(self, h5: h5py.File, name: str) -> None:
        if name in self.h5:  # HDF5-level copy: chunk by chunk, never whole in memory
            self.h5.copy(self.h5[name], h5, name=name)

    def close(self) -> None:
        self.h5.close()


class ZarrSource(Source):
    def __init__(self, path: Path) -> None:
        self.spec = str(path)
        try:
            import zarr

            self.group = zarr.open_group(str(path), mode="r")
            obs, var = read_elem(self.group["obs"]), read_elem(self.group["var"])
        except Exception as exc:
            raise IspoError(
                f"cannot read {path} ({type(exc).__name__}): is it a complete AnnData .zarr store?"
            ) from exc
        super().__init__(str(path), obs, var)

    def _elem(self, key: str):
        try:
            return self.group[key]
        except KeyError:
            return None

    def copy_to(self, h5: h5py.File, name: str) -> None:
        elem = self._elem(name)
        if elem is None:
            return
        if name == "X":
            copy_rows(self._open_matrix(elem, name), h5, name)
        elif name == "layers":
            grp = h5.create_group("layers")
            grp.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
            for key in elem:
                copy_rows(self._open_matrix(elem[key], f"layers/{key}"), grp, key)
        else:
            write_elem(h5, name, read_elem(elem))


class MemorySource(Source):
    """An AnnData already in this process (``demo:N``, or one the Python API was given)."""

    def __init__(self, adata: ad.AnnData, name: str = "the AnnData") -> None:
        self.adata = adata
        super().__init__(name, adata.obs, adata.var)

    def _elem(self, key: str):
        if key == "X":
            return self.adata.X
        if key == "layers":
            return self.adata.layers
        if key.startswith("layers/"):
            return self.adata.layers.get(key.split("/", 1)[1])
        return None

    def _open_matrix(self, elem, where: str):
        return elem

    def copy_to(self, h5: h5py.File, name: str) -> None:
        a = self.adata
        elem = {"X": a.X, "var": a.var, "raw": a.raw, "uns": dict(a.uns)}.get(name)
        if name in ("layers", "obsm", "varm", "obsp", "varp"):
            elem = dict(getattr(a, name))
        if elem is not None:
            write_elem(h5, name, elem)


def is_demo(source: object) -> bool:
    text = str(source)
    return isinstance(source, str) and (text == "demo" or text.startswith("demo:"))


def open_input(source: str | Path | ad.AnnData | Source, *, demo_cells: int = 1000) -> Source:
    """A :class:`Source` for an ``.h5ad``/``.zarr`` path, a tokenized dataset folder
    (:mod:`ispo.io.dataset`), ``demo[:N]`` or an AnnData.

    ``demo`` without a number gives ``demo_cells`` cells of the built-in SYNTHETIC data.
    """
    if isinstance(source, Source):
        return source
    if isinstance(source, ad.AnnData):
        return MemorySource(source)
    if is_demo(source):
        from ispo.io.demo import demo_adata

        try:
            n = int(source.split(":", 1)[1]) if ":" in source else demo_cells
        except ValueError as exc:
            raise IspoError(f"{source!r} is not demo:N with a number of cells N") from exc
        return MemorySource(demo_adata(n), source)
    path = _existing(source)

    if is_dataset(path):
        return DatasetSource(path)
    return ZarrSource(path) if _is_zarr(path) else H5adSource(path)


def _existing(source: str | Path) -> Path:
    path = Path(source)
    if not path.exists():
        raise IspoError(
            f"input {path} does not exist: give an .h5ad (or .zarr) file of raw counts, or a "
            "tokenized dataset folder"
        )
    return path


def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or path.is_dir()


def input_vocab(source: object, vocab: str | Vocab | None) -> Vocab:
    """The vocabulary of a run on ``source``: ``vocab``, or the demo one for ``demo[:N]``
    (which is also what ``vocab="demo"`` names); required for any other input."""
    from ispo.io.demo import demo_vocab

    if vocab is None and not is_demo(source):
        raise IspoError(NO_VOCAB)
    return demo_vocab() if vocab in (None, "demo") else load_vocab(vocab)


def open_with_vocab(
    source: str | Path | ad.AnnData | Source, vocab: str | Vocab | None, **kw
) -> tuple[Source, Vocab]:
    """(Source, Vocab) of a command's input: the vocabulary is checked first (no file read)."""
    voc = input_vocab(source, vocab)
    return open_input(source, **kw), voc


def read_input(source: str | Path | ad.AnnData, *, backed: bool = True) -> ad.AnnData:
    """The whole input as an AnnData, for the commands that need one (tune, bench-isp): a path
    (opened backed, read-only, by default), ``demo[:N]``, or the object itself."""
    if isinstance(source, ad.AnnData):
        return source
    if is_demo(source):
        return open_input(source).adata
    path = _existing(source)
    if is_dataset(path):
        raise IspoError(
            f"{path} is a tokenized dataset folder: this command needs the cells' counts, give "
            "the .h5ad (or .zarr) it was tokenized from"
        )
    try:
        return (
            ad.read_zarr(path)
            if _is_zarr(path)
            else ad.read_h5ad(path, backed="r" if backed else None)
        )
    except Exception as exc:
        raise _unreadable(path, exc, "a complete .h5ad/.zarr file") from exc


def copy_rows(m, h5: h5py.Group, name: str, chunk: int = COPY_ROWS) -> None:
    """Write a row-sliceable matrix into ``h5[name]`` chunk by chunk (sparse stays CSR)."""
    n = m.shape[0]
    first = m[0 : min(chunk, n)]
    if sp.issparse(first) or hasattr(first, "to_memory"):
        first = sp.csr_matrix(first)
        write_elem(h5, name, first)
        target = sparse_dataset(h5[name])
        for a in range(chunk, n, chunk):
            target.append(sp.csr_matrix(m[a : min(a + chunk, n)]))
        return
    first = np.asarray(first)
    ds = h5.create_dataset(name, shape=m.shape, dtype=first.dtype)
    ds.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    ds[: len(first)] = first
    for a in range(chunk, n, chunk):
        ds[a : min(a + chunk, n)] = np.asarray(m[a : min(a + chunk, n)])


def iter_count_chunks(
    matrix, start: int, stop: int, chunk_size: int
) -> Iterator[tuple[int, sp.csr_matrix]]:
    """Yield ``(first_row, csr_chunk)`` over rows ``[start, stop)``, one chunk read at a time."""
    for a in range(start, stop, chunk_size):
        block = matrix[a : min(a + chunk_size, stop)]
        if hasattr(block, "to_memory"):
            block = block.to_memory()
        block = sp.csr_matrix(block) if not sp.issparse(block) else block.tocsr()
        block.sum_duplicates()  # a count may be stored as several entries; ranks need the sum
        yield a, block


def obs_column(obs: pd.DataFrame, key: str) -> np.ndarray | None:
    """A column of ``obs`` as an array, or None when it is absent."""
    return obs[key].to_numpy() if key in obs.columns else None
