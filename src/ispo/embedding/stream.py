"""Streaming, resumable, multi-process embedding of a file of cells (``ispo embed``).

The cells are cut into *units* of ``chunk_cells`` input rows. For each unit: read its rows from
disk (a backed ``.h5ad`` or ``.zarr``; only obs and var are held in memory), tokenize, embed,
write the embeddings as one Parquet part under ``OUT.parts/`` and record it in the manifest
(:class:`ispo.io.shards.ShardWriter`: a part counts only once it is whole). A background
thread tokenizes the next unit while the device embeds this one, and a writer thread writes the
previous one, so reading, compute and writing overlap and at most three units are in memory.

At the end the output ``.h5ad`` is assembled unit by unit: the input's elements copied as they
are (``X`` and layers chunk-wise at the HDF5 level, or left out with ``copy_x=False``), plus
``obsm[key]`` (NaN rows for cells not embedded), ``obs["geneformer_embedded"]`` and
``uns["geneformer"]``. Peak host memory is set by the unit size, not by the number of cells.

A run stopped at any point (even ``kill -9``) continues with ``resume=True``: recorded units are
skipped, a half-written part is never recorded. Under torchrun (:mod:`ispo.runtime.dist`)
rank r embeds a contiguous block of the units still to do and records them in its own manifest;
rank 0
assembles. Units and their batches do not depend on the number of processes, so the output is
the same, bit for bit, however many processes made it.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from anndata.io import read_elem, sparse_dataset, write_elem
from tqdm.auto import tqdm

from ispo.embedding.embed import Method, checked_vocab, embed_cells
from ispo.errors import IspoError
from ispo.io.genes import build_gene_map
from ispo.io.vocab import Vocab, load_vocab
from ispo.io.write import atomic_output
from ispo.model.load import RANDOM_WARNING, GeneformerModel, Precision
from ispo.provenance import cpu_info, device_name, h5ad_safe, versions
from ispo.runtime import dist
from ispo.runtime.oom import OomSplitter
from ispo.runtime.pool import PoolMode
from ispo.runtime.profiler import Profiler
from ispo.tokens import MAX_CHUNK, NO_CELLS, TokenizedCells, iter_tokenize

log = logging.getLogger(__name__)
DEFAULT_CHUNK_CELLS = MAX_CHUNK  # 4096 rows per unit
TOKENIZE_ROWS = 1024  # rows ranked at a time: the ranking's temporaries scale with it


# -- reading ---------------------------------------------------------------------------------
class Source:
    """An input opened for reading by rows: ``obs`` and ``var`` in memory, matrices on disk.

    ``matrix(layer)`` is sliceable by rows (``m[a:b]`` gives a SciPy or NumPy block);
    ``copy_to(h5, name)`` writes the element ``name`` (``X``, ``layers``, ``obsm``...) into an
    open HDF5 file as AnnData stores it, without loading large matrices whole.
    """

    def __init__(self, name: str, obs: pd.DataFrame, var: pd.DataFrame) -> None:
        self.name, self.obs, self.var = name, obs, var

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    def _elem(self, key: str):
        raise NotImplementedError

    def matrix(self, layer: str | None):
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
        return _Rows(self._open_matrix(elem, where), self.name, where)

    def _open_matrix(self, elem, where: str):
        kind = _attr(elem, "encoding-type")
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


def _attr(elem, key: str):
    value = getattr(elem, "attrs", {}).get(key)
    return value.decode() if isinstance(value, bytes) else value


class _Rows:
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


class H5adSource(Source):
    def __init__(self, path: Path) -> None:
        try:
            self.h5 = h5py.File(path, "r")
        except Exception as exc:
            detail = " ".join(str(exc).split())[:120]
            raise IspoError(
                f"cannot read {path} ({type(exc).__name__}: {detail}): is it a complete .h5ad file?"
            ) from exc
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
            _copy_rows(self._open_matrix(elem, name), h5, name)
        elif name == "layers":
            grp = h5.create_group("layers")
            grp.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
            for key in elem:
                _copy_rows(self._open_matrix(elem[key], f"layers/{key}"), grp, key)
        else:
            write_elem(h5, name, read_elem(elem))


class MemorySource(Source):
    """An AnnData already in memory (``demo:N``, or the Python API)."""

    def __init__(self, adata: ad.AnnData, name: str = "memory") -> None:
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


def open_source(
    source: str | Path | ad.AnnData, vocab: str | Vocab | None = None
) -> tuple[Source, Vocab]:
    """(Source, Vocab) of an input path, ``demo[:N]`` (built-in synthetic data) or AnnData."""
    import ispo

    if isinstance(source, ad.AnnData):
        if vocab is None:
            raise IspoError("--vocab DIR is required: the Geneformer dictionaries of the model")
        return MemorySource(source), load_vocab(vocab)
    text = str(source)
    if text == "demo" or text.startswith("demo:"):
        try:
            n = int(text.split(":", 1)[1]) if ":" in text else 1000
        except ValueError as exc:
            raise IspoError(f"{text!r} is not demo:N with a number of cells N") from exc
        voc = ispo.demo_vocab() if vocab in (None, "demo") else load_vocab(vocab)
        return MemorySource(ispo.demo_adata(n), text), voc
    if vocab is None:
        raise IspoError("--vocab DIR is required: the Geneformer dictionaries of the model")
    voc = ispo.demo_vocab() if vocab == "demo" else load_vocab(vocab)
    path = Path(text)
    if not path.exists():
        raise IspoError(f"input {path} does not exist: give an .h5ad (or .zarr) file of raw counts")
    src = ZarrSource(path) if path.suffix == ".zarr" or path.is_dir() else H5adSource(path)
    return src, voc


def check_unique_names(names: pd.Index, what: str = "cell") -> None:
    """Outputs are keyed by cell id: refuse duplicate cell names with one clear line."""
    if not names.is_unique:
        dup = names[names.duplicated()]
        raise IspoError(
            f"{len(dup):,} duplicate {what} name(s) (e.g. {str(dup[0])!r}): outputs "
            "are keyed by cell id; make them unique first "
            "(AnnData.obs_names_make_unique())"
        )


class _Window:
    """Rows ``[start, stop)`` of a Source, shaped like the AnnData ``iter_tokenize`` reads."""

    def __init__(self, src: Source, matrix: _Rows, layer: str | None, start: int, stop: int):
        self.obs = src.obs.iloc[start:stop]
        self.var = src.var
        self.n_obs = stop - start
        self.obs_names = self.obs.index
        rows = _Offset(matrix, start, stop)
        self.X = rows if layer is None else None
        self.layers = {} if layer is None else {layer: rows}


class _Offset:
    def __init__(self, m: _Rows, start: int, stop: int) -> None:
        self.m, self.start = m, start
        self.shape = (stop - start, m.shape[1])

    def __getitem__(self, rows: slice):
        return self.m[slice(self.start + rows.start, self.start + rows.stop)]


# -- writing ---------------------------------------------------------------------------------
def _copy_rows(m, h5: h5py.Group, name: str, chunk: int = DEFAULT_CHUNK_CELLS) -> None:
    """Write a row-sliceable matrix into ``h5[name]`` chunk by chunk (sparse stays CSR)."""
    import scipy.sparse as sp

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


def _write_h5ad(
    path: Path,
    src: Source,
    blocks: Iterator[tuple[int, np.ndarray, np.ndarray]],
    hidden: int,
    key: str,
    meta: dict,
    copy_x: bool,
) -> int:
    """Assemble the output ``.h5ad``; ``blocks`` yields (first row, obs indices, embeddings).

    Returns the number of cells embedded.
    """
    n = src.n_obs
    embedded = np.zeros(n, dtype=bool)
    with h5py.File(path, "w") as h5:
        h5.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        for name in (
            "var",
            "varm",
            "obsp",
            "varp",
            "obsm",
            "uns",
            *(("X", "layers", "raw") if copy_x else ()),
        ):
            src.copy_to(h5, name)
        for name in ("obsm", "uns", "varm", "obsp", "varp", "layers"):
            if name not in h5:
                write_elem(h5, name, {})
        if key in h5["obsm"]:
            del h5["obsm"][key]
        # rows never written (cells not embedded) read as the fill value, NaN
        ds = h5["obsm"].create_dataset(
            key,
            shape=(n, hidden),
            dtype=np.float32,
            fillvalue=np.float32(np.nan),
            chunks=(max(1, min(n, 16384 // max(hidden, 1))), hidden),
        )
        ds.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        for start, obs_index, emb in blocks:
            if not len(obs_index):
                continue
            stop = int(obs_index.max()) + 1
            block = np.full((stop - start, hidden), np.nan, dtype=np.float32)
            block[obs_index - start] = emb
            ds[start:stop] = block
            embedded[obs_index] = True
        obs = src.obs.copy()
        obs["geneformer_embedded"] = embedded
        write_elem(h5, "obs", obs)
        if "geneformer" in h5["uns"]:
            del h5["uns"]["geneformer"]
        write_elem(
            h5["uns"], "geneformer", h5ad_safe({**meta, "n_cells_embedded": int(embedded.sum())})
        )
    return int(embedded.sum())


# -- the run ---------------------------------------------------------------------------------
def _runs(units: list[int]) -> list[tuple[int, int]]:
    """Maximal runs ``[u0, u1)`` of consecutive unit numbers."""
    runs: list[tuple[int, int]] = []
    for u in units:
        if runs and runs[-1][1] == u:
            runs[-1] = (runs[-1][0], u + 1)
        else:
            runs.append((u, u + 1))
    return runs


def _tokenized_units(
    src: Source,
    matrix: _Rows,
    vocab: Vocab,
    units: list[int],
    chunk: int,
    layer: str | None,
    gene_key: str | None,
    max_input: int,
    read_rows: int = TOKENIZE_ROWS,
) -> Iterator[tuple[int, TokenizedCells]]:
    """(unit, tokenized cells) of each unit, in order.

    One tokenizer pass per run of consecutive units (the gene map is built once per pass); the
    rows are read and ranked ``read_rows`` at a time and regrouped into units, so the ranking's
    temporaries stay small whatever the unit size. A unit's cells do not depend on
    ``read_rows``, so neither do its batches or its embeddings.
    """
    n = src.n_obs
    sub = min(chunk, read_rows)
    has_cls = vocab.version == 2
    for u0, u1 in _runs(units):
        a, b = u0 * chunk, min(u1 * chunk, n)
        window = _Window(src, matrix, layer, a, b)
        u, acc, rows_done = u0, [], a
        for part in iter_tokenize(
            window, vocab, layer=layer, gene_key=gene_key, max_input=max_input, chunk_size=sub
        ):
            part.obs_index = part.obs_index + a  # window rows -> input rows
            rows_done = min(rows_done + sub, b)
            while u < u1:  # a part ends inside a unit, or completes it (sub <= chunk)
                end = min((u + 1) * chunk, n)
                if rows_done < end:
                    acc.append(part)
                    break
                k = int(np.searchsorted(part.obs_index, end))
                acc.append(part.subset(np.arange(k)))
                yield u, TokenizedCells.concat(acc, has_cls)
                u, acc = u + 1, []
                part = part.subset(np.arange(k, len(part)))


def _prefetch(it: Iterator, depth: int = 1) -> Iterator:
    """Run ``it`` in a background thread, ``depth`` items ahead (tokenize while embedding)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def work() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as exc:
            q.put(exc)

    thread = threading.Thread(target=work, name="ispo-tokenize", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class _HeapTrimmer:
    """Give freed heap memory back to the OS every ``every`` batches (glibc's malloc_trim).

    Batches of different widths free and reallocate tensors of many sizes in several threads'
    malloc arenas; glibc keeps the freed pages mapped, and over one unit of a few thousand cells
    the resident size can creep to several times what is live (measured: 2-3 GiB instead of
    0.7 GiB on CPU). Trimming every few batches keeps the peak near the live size at a cost
    that is negligible next to a model's forward. A no-op where glibc is absent.
    """

    def __init__(self, every: int = 8) -> None:
        self.every, self.n = every, 0
        try:
            import ctypes

            self.trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self.trim = None

    def __call__(self, _cells: int = 0) -> None:
        self.n += 1
        if self.trim is not None and self.n % self.every == 0:
            self.trim(0)

    def now(self) -> None:
        if self.trim is not None:
            self.trim(0)


def _part_table(cells: TokenizedCells, emb: np.ndarray) -> pd.DataFrame:
    cols = {"obs_index": cells.obs_index.astype(np.int64)}
    cols.update({f"e{j}": emb[:, j] for j in range(emb.shape[1])})
    return pd.DataFrame(cols)


def _read_part(path: Path, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    df = pd.read_parquet(path)
    emb = df[[f"e{j}" for j in range(hidden)]].to_numpy(dtype=np.float32)
    return df["obs_index"].to_numpy(dtype=np.int64), emb


def embed_file(
    source: Source | str | Path | ad.AnnData,
    out: str | Path,
    model: GeneformerModel,
    *,
    vocab: Vocab | str | None = None,
    method: Method = "fast",
    precision: Precision = "fp32",
    emb_layer: int = -1,
    pool_mode: PoolMode = "mean",
    batch_tokens: int | None = None,
    batch_size: int = 10,
    layer: str | None = None,
    gene_key: str | None = None,
    key_added: str = "X_geneformer",
    chunk_cells: int = DEFAULT_CHUNK_CELLS,
    copy_x: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    extra_uns: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Embed every cell of a file into ``out`` (an ``.h5ad``), streaming and resumable.

    Parameters
    ----------
    source
        A :class:`Source`, an ``.h5ad``/``.zarr`` path, ``demo[:N]`` or an AnnData.
    out
        The output ``.h5ad``: the input's elements (``X`` and layers only with ``copy_x``) plus
        ``obsm[key_added]``, ``obs["geneformer_embedded"]`` and ``uns["geneformer"]``.
    chunk_cells
        Input rows per unit: what is tokenized, embedded (cells are batched by length within a
        unit) and written at once, and what a resumed run skips. Results do not depend on it beyond
        float rounding
        (batches are formed within a unit), and not at all on the number of processes.
    resume
        Continue a stopped run from ``OUT.parts/`` (same input and options).

    Returns a summary (cells, seconds, cells/s of this run) on rank 0, None on the others.
    """
    if not isinstance(source, Source):
        source, vocab = open_source(source, vocab if vocab is not None else model.vocab)
    src = source
    vocab = checked_vocab(model, vocab, pool_mode)
    if chunk_cells < 1:
        raise IspoError(f"--chunk-cells must be at least 1, not {chunk_cells}")
    if src.n_obs == 0:
        raise IspoError(f"{src.name} has no cells")
    check_unique_names(src.obs.index)
    build_gene_map(src.var, vocab, gene_key)  # no gene ids / none in the vocabulary: fail now
    matrix = src.matrix(layer)
    model.layers_for(emb_layer)  # a bad emb_layer fails before any work
    out = Path(out)
    hidden = model.config.hidden
    n_units = -(-src.n_obs // chunk_cells)
    fingerprint = {
        "what": "embed",
        "data": src.fingerprint(),
        "n_vars": int(src.var.shape[0]),
        "layer": layer,
        "gene_key": gene_key,
        "model": model.name,
        "seed": model.seed,
        "vocab": vocab.source,
        "method": method,
        "precision": precision,
        "emb_layer": emb_layer,
        "pool": pool_mode,
        "batch_tokens": batch_tokens,
        "batch_size": batch_size,
        "chunk_cells": chunk_cells,
        "settings": extra_uns or {},
    }
    writer = dist.shard_writer(out, fingerprint, resume=resume, overwrite=overwrite)
    me = dist.info()
    pending = [u for u in range(n_units) if not writer.done(u)]
    todo = [pending[k] for k in dist.block(len(pending))]  # a contiguous block per rank
    rows_todo = sum(min((u + 1) * chunk_cells, src.n_obs) - u * chunk_cells for u in todo)
    if resume and me.main:
        log.info("resuming: %d of %d units already done", len(writer.manifest["done"]), n_units)
    max_input = min(vocab.max_input, model.config.max_len)
    oom = OomSplitter(what="embed")
    trim = _HeapTrimmer()
    n_cells = 0
    t0 = time.perf_counter()
    in_flight: Future | None = None
    try:
        with (
            Profiler(device=model.device) as prof,
            ThreadPoolExecutor(1) as pool_,
            tqdm(
                total=rows_todo,
                unit="cell",
                disable=not progress,
                desc=f"embed ({method})" + (f" rank 0/{me.world}" if me.active else ""),
            ) as bar,
            closing(
                _prefetch(
                    _tokenized_units(
                        src, matrix, vocab, todo, chunk_cells, layer, gene_key, max_input
                    )
                )
            ) as units,
        ):
            for u, cells in units:
                emb = embed_cells(
                    cells,
                    model,
                    method=method,
                    precision=precision,
                    emb_layer=emb_layer,
                    pool_mode=pool_mode,
                    batch_tokens=batch_tokens,
                    batch_size=batch_size,
                    oom=oom,
                    on_batch=trim,
                )
                table = _part_table(cells, emb)
                if in_flight is not None:
                    in_flight.result()  # one write in flight: memory stays bounded
                in_flight = pool_.submit(writer.write, u, {"emb": table})
                n_cells += len(cells)
                bar.update(min((u + 1) * chunk_cells, src.n_obs) - u * chunk_cells)
                del cells, emb, table
                trim.now()
            if in_flight is not None:
                in_flight.result()
    except IspoError:
        # bad input found mid-run: a fresh single-process run that finished nothing leaves
        # nothing behind (a resumed or multi-process run keeps its parts folder)
        if not me.active and not resume and not writer.manifest["done"]:
            shutil.rmtree(writer.parts, ignore_errors=True)
        raise
    t_run = time.perf_counter() - t0
    (n_all,) = dist.all_sum(n_cells)  # every rank's count, and a wait until all have written
    t_all = time.perf_counter() - t0
    if not me.main:
        return None
    writer.refresh()
    missing = [u for u in range(n_units) if not writer.done(u)]
    if missing:
        raise IspoError(
            f"units {missing[:5]} of {writer.parts} were not written (a process "
            "stopped?): rerun with --resume"
        )
    done = writer.manifest["done"]
    parts = [writer.parts / done[str(u)]["emb"] for u in range(n_units)]
    if sum(pq.ParquetFile(p).metadata.num_rows for p in parts) == 0:
        shutil.rmtree(writer.parts, ignore_errors=True)  # finished, with nothing to write
        raise IspoError(NO_CELLS)

    def blocks() -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        for u, path in enumerate(parts):
            idx, emb = _read_part(path, hidden)
            yield u * chunk_cells, idx, emb

    meta = {
        **model.metadata(),
        "vocab": vocab.source,
        "method": method,
        "precision": precision,
        "emb_layer": emb_layer,
        "pool": pool_mode,
        "key_added": key_added,
        "device": device_name(model.device),
        "cpu": cpu_info(),
        "seconds": {"embed": t_all},
        "versions": versions(),
        "profile": prof.stats.to_dict(),
        "stream": {
            "chunk_cells": chunk_cells,
            "processes": me.world,
            "resumed": resume,
            "n_cells_this_run": int(n_all),
            "copy_x": copy_x,
        },
        **(extra_uns or {}),
    }
    t1 = time.perf_counter()
    with atomic_output(out, overwrite) as tmp:
        n_embedded = _write_h5ad(tmp, src, blocks(), hidden, key_added, meta, copy_x)
    shutil.rmtree(writer.parts, ignore_errors=True)
    if model.random_init:
        log.warning(RANDOM_WARNING.format(name=model.name, seed=model.seed))
    return {
        "n_obs": src.n_obs,
        "n_embedded": n_embedded,
        "n_cells_this_run": int(n_all),
        "seconds_embed": t_all,
        "seconds_rank0": t_run,
        "seconds_write": time.perf_counter() - t1,
        "cells_per_s": n_all / t_all if t_all else None,
        "processes": me.world,
    }
