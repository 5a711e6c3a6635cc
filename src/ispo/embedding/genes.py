"""Gene embeddings: each gene's contextual embedding, summarised over the cells that express it.

Geneformer's ``EmbExtractor(emb_mode="gene")``: every cell runs through the model, and each token
position's hidden state at the chosen layer (``emb_layer``: -1 penultimate, 0 last) is that gene's
embedding in that cell; a gene's embedding is the summary over the cells where it occurs. As in
Geneformer every position of a cell counts, so a V2 input also gives ``<cls>`` and ``<eos>`` rows.

- ``mean`` (Geneformer's ``summary_stat=None``, and what its t-digest ``mean`` approximates): the
  exact mean, from per-token sums kept on the device in float64 (memory: vocabulary x width).
- ``median``: the exact per-dimension median (midpoint of the two middle values for an even
  count; Geneformer's t-digest ``median`` approximates it). It needs every (gene, cell) vector,
  so they are spilled to a temporary file beside the output (tokens x width x 4 bytes; use
  ``--max-ncells`` to bound it) and each gene's rows are read back in turn.

Cells are read, tokenized (or taken as given from a tokenized dataset) and chosen (``--filter``,
``--max-ncells``) as ``ispo embed`` does (:class:`ispo.embedding.stream.UnitReader`, worker
processes ahead of the device). The output is an AnnData of genes (``.h5ad``: ``X`` the
embeddings, ``obs`` the Ensembl id as index, ``symbol``, ``token``, ``n_cells``) or a Parquet
table with the same columns and ``e0..e{h-1}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from ispo.embedding.embed import checked_vocab, embedding_metadata
from ispo.embedding.stream import DEFAULT_CHUNK_CELLS, UnitReader, tokenized_units
from ispo.errors import IspoError
from ispo.io.read import Source, open_input
from ispo.io.vocab import Vocab
from ispo.io.write import atomic_output
from ispo.model.load import GeneformerModel
from ispo.provenance import h5ad_safe
from ispo.runtime.batching import token_budget_batches
from ispo.runtime.feed import default_workers
from ispo.runtime.oom import OomSplitter
from ispo.runtime.profiler import Profiler
from ispo.runtime.runner import Runner, Tokens, choose_layout, default_batch_tokens
from ispo.tokens import NO_CELLS, TokenizedCells, cell_reader

GENE_STATS = ("mean", "median")


class GeneSums:
    """What the summaries need, gathered batch by batch: per-token float64 sums and counts on
    the device (mean), or every (token, vector) pair appended to a spill file (median)."""

    def __init__(self, n_tokens: int, hidden: int, device: torch.device, spill: Path | None):
        self.counts = torch.zeros(n_tokens, dtype=torch.int64, device=device)
        self.sums = (
            None if spill else torch.zeros(n_tokens, hidden, dtype=torch.float64, device=device)
        )
        self.spill, self.hidden = spill, hidden
        self.tokens: list[np.ndarray] = []
        if spill is not None:
            spill.write_bytes(b"")

    def add(self, tokens: torch.Tensor, hidden: torch.Tensor) -> None:
        """``hidden`` (T, h) are the states of ``tokens`` (T,), one row per cell and position."""
        self.counts.index_add_(0, tokens, torch.ones_like(tokens))
        if self.sums is not None:
            self.sums.index_add_(0, tokens, hidden.double())
            return
        self.tokens.append(tokens.cpu().numpy().astype(np.int32))
        with self.spill.open("ab") as f:
            f.write(hidden.float().cpu().numpy().tobytes())

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens seen, (G, h) float32 summaries, cells per token), tokens ascending."""
        counts = self.counts.cpu().numpy()
        seen = np.flatnonzero(counts)
        if self.sums is not None:
            mean = self.sums[torch.from_numpy(seen).to(self.sums.device)].cpu().numpy()
            return seen, (mean / counts[seen, None]).astype(np.float32), counts[seen]
        return seen, self._medians(seen), counts[seen]

    def _medians(self, seen: np.ndarray) -> np.ndarray:
        tokens = np.concatenate(self.tokens) if self.tokens else np.zeros(0, np.int32)
        rows = np.memmap(self.spill, dtype=np.float32, mode="r", shape=(len(tokens), self.hidden))
        order = np.argsort(tokens, kind="stable")  # each gene's rows, in input order
        bounds = np.searchsorted(tokens[order], np.append(seen, seen[-1] + 1) if len(seen) else [])
        out = np.empty((len(seen), self.hidden), dtype=np.float32)
        for g in range(len(seen)):
            out[g] = np.median(rows[order[bounds[g] : bounds[g + 1]]], axis=0)
        del rows
        return out


def token_states(
    cells: TokenizedCells, runner: Runner, dev: torch.device, budget: int, oom: OomSplitter
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(tokens, hidden states) of every position of every cell, a token-budget batch at a time
    (a batch that runs out of memory is split and retried)."""

    def run(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        tok = Tokens.from_cells(cells, idx, dev)
        enc = runner.encode(tok)
        within = torch.arange(len(tok.ids), device=dev) - torch.repeat_interleave(
            torch.cumsum(tok.lengths, 0) - tok.lengths, tok.lengths
        )
        flat = torch.repeat_interleave(enc.starts, tok.lengths) + within
        states = enc.flat()[flat]
        rows = np.repeat(cells.obs_index[idx], cells.lengths[idx])  # each token's cell
        runner.finite.add("gene embeddings", states, rows)  # checked once per unit (_gather)
        return tok.ids, states

    cost = lambda j: len(j) * int(cells.lengths[j].max())
    for idx in token_budget_batches(cells.lengths, budget):
        for _, got in oom.run(run, idx, cost):
            yield got


@dataclass(frozen=True)
class GeneRun:
    """What a gene-embedding run is asked for (besides the model and its settings)."""

    stat: str = "mean"
    rows: np.ndarray | None = None  # input rows to use (--filter / --max-ncells); None: all
    layer: str | None = None
    gene_key: str | None = None
    chunk_cells: int = DEFAULT_CHUNK_CELLS
    workers: int | None = None


def embed_genes(
    source: Source | str | Path | ad.AnnData,
    out: str | Path,
    model: GeneformerModel,
    vocab: Vocab | str | None = None,
    run: GeneRun = GeneRun(),
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the gene embeddings of ``source`` to ``out`` (``.h5ad`` or ``.parquet``) with the
    model's settings (layer, precision, token budget); returns a summary of the run."""
    if run.stat not in GENE_STATS:
        raise IspoError(f"gene embeddings summarise by mean or median, not {run.stat!r}")
    out = Path(out)
    if out.suffix not in (".h5ad", ".parquet"):
        raise IspoError(f"gene embeddings go to an .h5ad or .parquet file, not {out.name}")
    src = open_input(source)
    vocab = checked_vocab(model, vocab if vocab is not None else model.vocab)
    s = model.settings
    tok = cell_reader(
        src, vocab, layer=run.layer, gene_key=run.gene_key, max_input=model.max_input(vocab)
    )
    reader = UnitReader(tok, run.chunk_cells, src.n_obs, src.spec, src, keep=run.rows)
    runner = Runner(
        model.encoder(model.layers_for(s.emb_layer)),
        pad_id=model.config.pad_id,
        layout=choose_layout(s.layout, model.device, s.precision),
    )
    workers = default_workers() if run.workers is None else run.workers
    t0 = time.perf_counter()
    with atomic_output(out, overwrite) as tmp:
        spill = tmp.with_name(tmp.name + ".spill") if run.stat == "median" else None
        try:
            sums = GeneSums(vocab.size, model.config.hidden, model.device, spill)
            n_cells, profile = _gather(reader, runner, sums, model, workers, progress)
            if n_cells == 0:
                raise IspoError(NO_CELLS)
            tokens, vectors, counts = sums.result()
        finally:
            if spill is not None:
                spill.unlink(missing_ok=True)
        meta = embedding_metadata(model, vocab, s, "fast", "genes", profile)
        meta.update(emb_mode="gene", summary_stat=run.stat, n_cells_embedded=n_cells)
        meta["seconds"] = {"embed": time.perf_counter() - t0}
        table = gene_table(vocab, tokens, counts)
        _write(tmp, out.suffix, table, vectors, meta)
    return dict(n_obs=src.n_obs, n_embedded=n_cells, n_genes=len(tokens), seconds=meta["seconds"])


def _gather(
    reader: UnitReader,
    runner: Runner,
    sums: GeneSums,
    model: GeneformerModel,
    workers: int,
    progress: bool,
) -> tuple[int, dict]:
    """Run every chosen cell, adding its token states to ``sums``; (cells, profile)."""
    budget = model.settings.batch_tokens or default_batch_tokens(model.device)
    oom, n_cells = OomSplitter(what="embed genes"), 0
    units = list(range(-(-reader.n_obs // reader.chunk)))
    with (
        closing(tokenized_units(reader, units, workers)) as it,
        Profiler(device=model.device) as prof,
        torch.inference_mode(),
        tqdm(total=reader.n_obs, unit="cell", disable=not progress, desc="embed genes") as bar,
    ):
        for u, cells in it:
            for tokens, hidden in token_states(cells, runner, model.device, budget, oom):
                sums.add(tokens, hidden)
            runner.finite.check()  # no NaN/Inf state reaches the output (ispo.runtime.finite)
            n_cells += len(cells)
            bar.update(min(reader.chunk, reader.n_obs - u * reader.chunk))
    return n_cells, prof.stats.to_dict()


def gene_table(vocab: Vocab, tokens: np.ndarray, counts: np.ndarray) -> pd.DataFrame:
    """The genes' annotations: Ensembl id (index), symbol, token, cells."""
    ids = vocab.id_of_token()[tokens].astype(str)
    return pd.DataFrame(
        {
            "symbol": [vocab.symbol(g) for g in ids],
            "token": tokens.astype(np.int64),
            "n_cells": counts.astype(np.int64),
        },
        index=pd.Index(ids, name="ensembl_id"),
    )


def _write(path: Path, kind: str, table: pd.DataFrame, vectors: np.ndarray, meta: dict) -> None:
    if kind == ".h5ad":
        genes = ad.AnnData(X=vectors, obs=table)
        genes.uns["geneformer"] = h5ad_safe(meta)
        genes.write_h5ad(path)
        return
    cols = {c: pa.array(table[c].to_numpy()) for c in table.columns}
    cols = {"ensembl_id": pa.array(table.index.to_numpy().astype(str)), **cols}
    cols.update(
        {f"e{j}": pa.array(np.ascontiguousarray(vectors[:, j])) for j in range(vectors.shape[1])}
    )
    t = pa.table(cols).replace_schema_metadata(
        {"geneformer": json.dumps(h5ad_safe(meta), default=str)}
    )
    pq.write_table(t, path)
