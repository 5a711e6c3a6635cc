"""Streaming, resumable, multi-process embedding of a file of cells (``ispo embed``).

The cells are cut into *units* of ``chunk_cells`` input rows. For each unit: read its rows from
disk (a backed ``.h5ad`` or ``.zarr``; only obs and var are held in memory), tokenize, embed,
write the embeddings as one Parquet part under ``OUT.parts/`` and record it in the manifest
(:class:`ispo.io.shards.ShardWriter`: a part counts only once it is whole). Worker processes
(``workers``; :class:`ispo.runtime.feed.OrderedMap`) read and tokenize the next units while the
device embeds this one, and a writer thread writes the previous one, so reading, tokenizing,
compute and writing overlap; at most ``2 * workers + 2`` units are in memory.

Results do not depend on ``chunk_cells`` beyond float rounding (cells are batched by length
within a unit), nor at all on the number of processes or workers. At the end the output
``.h5ad`` is assembled unit by unit: the input's elements copied as they are (``X`` and layers
chunk-wise at the HDF5 level, or left out with ``copy_x=False``), plus ``obsm[key]`` (NaN rows
for cells not embedded), ``obs["geneformer_embedded"]`` and ``uns["geneformer"]``; a model with
a cell classifier adds ``obs["pred_class"]`` and ``obs["prob_<class>"]``. Peak host
memory is set by the unit size and the number of workers, not by the number of cells.

A run stopped at any point (even ``kill -9``) continues with ``resume=True``: recorded units are
skipped, a half-written part is never recorded. Under torchrun (:mod:`ispo.runtime.dist`)
rank r embeds a contiguous block of the units still to do and records them in its own manifest;
rank 0 assembles. Units and their batches do not depend on the number of processes or workers,
so the output is the same, bit for bit, however many made it.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pyarrow as pa
from anndata.io import write_elem
from tqdm.auto import tqdm

from ispo.embedding.embed import (
    Method,
    checked_vocab,
    embed_cells,
    embedding_metadata,
    probs_buffer,
)
from ispo.errors import IspoError
from ispo.io.read import MemorySource, Source, open_input, open_with_vocab  # noqa: F401
from ispo.io.shards import part_footer, read_part
from ispo.io.validate import check_unique_names
from ispo.io.vocab import Vocab
from ispo.io.write import atomic_output
from ispo.model.finetuned import Classifier
from ispo.model.load import RANDOM_WARNING, GeneformerModel
from ispo.provenance import h5ad_safe
from ispo.runtime import dist
from ispo.runtime.feed import OrderedMap, default_workers
from ispo.runtime.oom import OomSplitter
from ispo.runtime.profiler import Profiler
from ispo.settings import Pool, Precision
from ispo.tokens import MAX_CHUNK, NO_CELLS, GivenTokens, TokenizedCells, Tokenizer, cell_reader

log = logging.getLogger(__name__)
DEFAULT_CHUNK_CELLS = MAX_CHUNK  # 4096 rows per unit
TOKENIZE_ROWS = 1024  # rows ranked at a time: the ranking's temporaries scale with it


# -- writing ---------------------------------------------------------------------------------
def _write_h5ad(
    path: Path,
    src: Source,
    blocks: Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]],
    hidden: int,
    key: str,
    meta: dict,
    copy_x: bool,
    classifier: Classifier | None = None,
) -> int:
    """Assemble the output ``.h5ad``; ``blocks`` yields (first row, obs indices, embeddings,
    class probabilities or None).

    Returns the number of cells embedded.
    """
    n = src.n_obs
    embedded = np.zeros(n, dtype=bool)
    probs_all = probs_buffer(classifier, n)
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
        for start, obs_index, emb, probs in blocks:
            if not len(obs_index):
                continue
            stop = int(obs_index.max()) + 1
            block = np.full((stop - start, hidden), np.nan, dtype=np.float32)
            block[obs_index - start] = emb
            ds[start:stop] = block
            embedded[obs_index] = True
            if probs_all is not None:
                probs_all[obs_index] = probs
        obs = src.obs.copy()
        obs["geneformer_embedded"] = embedded
        if classifier is not None:
            for col, values in classifier.cell_columns(probs_all).items():
                obs[col] = values
        write_elem(h5, "obs", obs)
        if "geneformer" in h5["uns"]:
            del h5["uns"]["geneformer"]
        write_elem(
            h5["uns"], "geneformer", h5ad_safe({**meta, "n_cells_embedded": int(embedded.sum())})
        )
    return int(embedded.sum())


# -- the run ---------------------------------------------------------------------------------
@dataclass
class UnitReader:
    """Reads and tokenizes the units of one input; picklable, so a worker process runs it.

    A unit is input rows ``[u * chunk, (u + 1) * chunk)``, read and ranked ``read_rows`` at a
    time (the ranking's temporaries scale with it). Its cells do not depend on ``read_rows``,
    on which units are asked for or on who reads them, so neither do its batches or its
    embeddings: what makes any number of processes and workers agree bit for bit.
    """

    tokenizer: Tokenizer | GivenTokens
    chunk: int
    n_obs: int
    spec: str | None  # a file input: reopened by path in each process that reads it
    src: Source | None = None  # the open input (dropped when a file input crosses processes)
    read_rows: int = TOKENIZE_ROWS
    keep: np.ndarray | None = None  # the input rows to use (--filter, --max-ncells); None: all
    warn_empty: bool = True  # warn about cells with no vocabulary gene (the first pass only)

    def __call__(self, u: int) -> tuple[int, TokenizedCells]:
        a, b = u * self.chunk, min((u + 1) * self.chunk, self.n_obs)
        has_cls = self.tokenizer.special is not None
        if self.keep is not None and not self.keep[a:b].any():
            return u, TokenizedCells.concat([], has_cls)  # nothing chosen here: nothing read
        if self.src is None:
            self.src = open_input(self.spec)
        rows = min(self.chunk, self.read_rows)
        parts = self.tokenizer.rows(self.src, a, b, chunk_size=rows, warn_empty=self.warn_empty)
        cells = TokenizedCells.concat(list(parts), has_cls)
        if self.keep is not None:
            cells = cells.subset(np.flatnonzero(self.keep[cells.obs_index]))
        return u, cells

    def detached(self) -> UnitReader:
        """A copy for worker processes: open HDF5 handles do not cross processes."""
        return replace(self, src=None) if self.spec is not None else self

    def __getstate__(self) -> dict:
        return self.detached().__dict__ if self.spec is not None else dict(self.__dict__)


def tokenized_units(reader: UnitReader, units: list[int], workers: int) -> OrderedMap:
    """``(unit, cells)`` of ``units`` in order, tokenized ahead of the device by ``workers``
    processes (0: one background thread of this process)."""
    return OrderedMap(reader.detached() if workers > 0 else reader, units, workers=workers)


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


def _part_table(cells: TokenizedCells, emb: np.ndarray, probs: np.ndarray | None) -> pa.Table:
    """A unit's part: ``obs_index``, one float32 column per dimension (``e<j>``) and per class
    probability (``p<j>``), built in Arrow from the transposed blocks (pandas' per-column
    frame cost ~10 us per cell at h = 256)."""
    table = {"obs_index": pa.array(cells.obs_index.astype(np.int64))}
    table.update({f"e{j}": pa.array(col) for j, col in enumerate(np.ascontiguousarray(emb.T))})
    if probs is not None:
        table.update({f"p{j}": pa.array(col) for j, col in enumerate(probs.T.copy())})
    return pa.table(table)


def _read_part(
    path: Path, hidden: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    t = read_part(path)

    def stacked(prefix: str, n: int) -> np.ndarray:
        out = np.empty((t.num_rows, n), dtype=np.float32)
        for j in range(n):
            out[:, j] = t.column(f"{prefix}{j}").to_numpy()
        return out

    probs = stacked("p", n_classes) if n_classes else None
    return t.column("obs_index").to_numpy().astype(np.int64), stacked("e", hidden), probs


def embed_file(
    source: Source | str | Path | ad.AnnData,
    out: str | Path,
    model: GeneformerModel,
    *,
    vocab: Vocab | str | None = None,
    method: Method = "fast",
    precision: Precision = "fp32",
    emb_layer: int = -1,
    pool_mode: Pool | str = "mean",
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
    workers: int | None = None,
    encode: Callable[..., np.ndarray] = embed_cells,
    rows: np.ndarray | None = None,
) -> dict[str, Any] | None:
    """Embed every cell of ``source`` (a Source, ``.h5ad``/``.zarr`` path, ``demo[:N]`` or
    AnnData) into ``out`` (an ``.h5ad``), streaming and resumable, as the module docstring says.

    ``chunk_cells`` rows make a unit; ``workers`` processes tokenize ahead (None: the cores left
    on this node; 0: a thread); ``encode`` embeds a unit's cells (default
    :func:`~ispo.embedding.embed.embed_cells`; ``benchmarks/pipeline.py`` passes a host-only
    stand-in). ``rows`` (a boolean mask over the input rows, from
    :func:`ispo.io.select.choose_rows`) limits the run to those cells; the others get NaN rows.
    Returns a summary of this run on rank 0, None on the others.
    """
    src = open_input(source)
    vocab = checked_vocab(model, vocab if vocab is not None else model.vocab, pool_mode)
    opts = dict(method=method, precision=precision, emb_layer=emb_layer, pool_mode=pool_mode)
    opts.update(batch_tokens=batch_tokens, batch_size=batch_size)
    reader = _reader(src, vocab, model, chunk_cells, layer, gene_key, emb_layer)
    reader.keep = rows
    fingerprint = _fingerprint(src, vocab, model, opts | dict(layer=layer, gene_key=gene_key))
    if rows is not None:
        fingerprint["rows"] = hashlib.sha1(np.packbits(rows).tobytes()).hexdigest()
    fingerprint.update(chunk_cells=chunk_cells, settings=extra_uns or {})
    writer = dist.shard_writer(out, fingerprint, resume=resume, overwrite=overwrite)
    n_units, todo = _todo(writer, -(-src.n_obs // chunk_cells), resume)
    me = dist.info()
    workers = default_workers(me.local_world) if workers is None else workers
    t0 = time.perf_counter()
    with dist.discarded_on_bad_input(writer, resume):  # embed and write this rank's units
        n_cells, profile = _embed_units(
            reader, todo, writer, model, encode, opts, workers, progress
        )
    t_run = time.perf_counter() - t0
    (n_all,) = dist.all_sum(n_cells)  # every rank's count, and a wait until all have written
    t_all = time.perf_counter() - t0
    if not me.main:
        return None
    stream = dict(chunk_cells=chunk_cells, processes=me.world, workers=workers, resumed=resume)
    meta = _metadata(model, vocab, opts, key_added, t_all, profile, stream, extra_uns)
    meta["stream"].update(n_cells_this_run=int(n_all), copy_x=copy_x)
    t1 = time.perf_counter()
    n_embedded = _assemble(
        src, writer, n_units, Path(out), model, meta, (key_added, copy_x, overwrite)
    )
    summary = dict(n_obs=src.n_obs, n_embedded=n_embedded, n_cells_this_run=int(n_all))
    summary.update(seconds_embed=t_all, seconds_rank0=t_run, seconds_write=time.perf_counter() - t1)
    return summary | {"cells_per_s": n_all / t_all if t_all else None, "processes": me.world}


def _fingerprint(
    src: Source, vocab: Vocab, model: GeneformerModel, opts: dict[str, Any]
) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (input, model, options)."""
    classes = {} if model.classifier is None else {"classes": list(model.classifier.classes)}
    return classes | {
        "what": "embed",
        "data": src.fingerprint(),
        "n_vars": int(src.var.shape[0]),
        "model": model.name,
        "seed": model.seed,
        "vocab": vocab.source,
        **{k: v for k, v in opts.items() if k != "pool_mode"},
        "pool": opts["pool_mode"],
    }


def _todo(writer, n_units: int, resume: bool) -> tuple[int, list[int]]:
    """(units, this rank's units): a contiguous block of those not yet recorded."""
    pending = [u for u in range(n_units) if not writer.done(u)]
    if resume and dist.is_main():
        log.info("resuming: %d of %d units already done", len(writer.manifest["done"]), n_units)
    return n_units, [pending[k] for k in dist.block(len(pending))]


def _metadata(
    model: GeneformerModel,
    vocab: Vocab,
    opts: dict[str, Any],
    key_added: str,
    seconds: float,
    profile: dict,
    stream: dict,
    extra_uns: dict | None,
) -> dict[str, Any]:
    """``uns["geneformer"]`` of the output: what :func:`ispo.embed` records, plus timing and
    how the stream ran."""
    settings = model.settings.replace(
        precision=opts["precision"], emb_layer=opts["emb_layer"], pool=opts["pool_mode"]
    )
    meta = embedding_metadata(model, vocab, settings, opts["method"], key_added, profile)
    return {**meta, "seconds": {"embed": seconds}, "stream": stream, **(extra_uns or {})}


def _reader(
    src: Source,
    vocab: Vocab,
    model: GeneformerModel,
    chunk_cells: int,
    layer: str | None,
    gene_key: str | None,
    emb_layer: int,
) -> UnitReader:
    """The input's unit reader, after every check that can fail before any work."""
    if chunk_cells < 1:
        raise IspoError(f"--chunk-cells must be at least 1, not {chunk_cells}")
    if src.n_obs == 0:
        raise IspoError(f"{src.name} has no cells")
    check_unique_names(src.obs.index)
    max_input = model.max_input(vocab)
    tok = cell_reader(src, vocab, layer=layer, gene_key=gene_key, max_input=max_input)
    model.layers_for(emb_layer)  # a bad emb_layer fails before any work
    return UnitReader(tok, chunk_cells, src.n_obs, src.spec, src)


def _embed_units(
    reader: UnitReader,
    todo: list[int],
    writer,
    model: GeneformerModel,
    encode: Callable[..., np.ndarray],
    opts: dict[str, Any],
    workers: int,
    progress: bool,
) -> tuple[int, dict]:
    """Embed and write this process's units; returns (cells embedded, profile).

    Units arrive tokenized, in order, from the workers; one write is in flight at a time in a
    thread, so reading, tokenizing, compute and writing overlap with bounded memory.
    """
    me = dist.info()
    oom, trim = OomSplitter(what="embed"), _HeapTrimmer()

    def rows_of(u: int) -> int:
        return min((u + 1) * reader.chunk, reader.n_obs) - u * reader.chunk

    n_cells, in_flight = 0, None
    desc = f"embed ({opts['method']})" + (f" rank 0/{me.world}" if me.active else "")
    with (
        closing(tokenized_units(reader, todo, workers)) as units,  # workers start first
        Profiler(device=model.device) as prof,
        ThreadPoolExecutor(1) as pool_,
        tqdm(total=sum(map(rows_of, todo)), unit="cell", disable=not progress, desc=desc) as bar,
    ):
        for u, cells in units:
            probs = probs_buffer(model.classifier, len(cells))
            got = {} if probs is None else {"probs_out": probs}  # read in the same pass
            emb = encode(cells, model, oom=oom, on_batch=trim, **opts, **got)
            table = _part_table(cells, emb, probs)
            if in_flight is not None:
                in_flight.result()  # one write in flight: memory stays bounded
            in_flight = pool_.submit(writer.write, u, {"emb": table})
            n_cells += len(cells)
            bar.update(rows_of(u))
            del cells, emb, table
            trim.now()
        if in_flight is not None:
            in_flight.result()
    return n_cells, prof.stats.to_dict()


def _assemble(
    src: Source,
    writer,
    n_units: int,
    out: Path,
    model: GeneformerModel,
    meta: dict,
    output: tuple[str, bool, bool],
) -> int:
    """Rank 0: check every unit is written, then write the output ``.h5ad`` from the parts
    (``output``: the obsm key, whether X is copied, whether an existing file is replaced)."""
    key_added, copy_x, overwrite = output
    writer.refresh()
    missing = [u for u in range(n_units) if not writer.done(u)]
    if missing:
        raise IspoError(
            f"units {missing[:5]} of {writer.parts} were not written (a process "
            "stopped?): rerun with --resume"
        )
    parts = [writer.part(u, "emb") for u in range(n_units)]
    if sum(part_footer(p).num_rows for p in parts) == 0:
        shutil.rmtree(writer.parts, ignore_errors=True)  # finished, with nothing to write
        raise IspoError(NO_CELLS)
    chunk, hidden = meta["stream"]["chunk_cells"], model.config.hidden
    clf = model.classifier
    n_classes = 0 if clf is None else len(clf.classes)

    def blocks() -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
        for u, path in enumerate(parts):
            idx, emb, probs = _read_part(path, hidden, n_classes)
            yield u * chunk, idx, emb, probs

    with atomic_output(out, overwrite) as tmp:
        n_embedded = _write_h5ad(tmp, src, blocks(), hidden, key_added, meta, copy_x, clf)
    shutil.rmtree(writer.parts, ignore_errors=True)
    if model.random_init:
        log.warning(RANDOM_WARNING.format(name=model.name, seed=model.seed))
    return n_embedded
