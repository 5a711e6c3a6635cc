"""The in-silico perturbation engine: Geneformer's InSilicoPerturber numbers, computed fast.

Per shard of cells: every cell's perturbations are built on the device by index arithmetic
(:mod:`ispo.perturbation.index`); each cell's original is run once; perturbed sequences of many
cells are packed into token-budget batches (length-sorted, so padding stays small; one cell's
perturbations all share a length); the encoder runs only up to the needed layer without the MLM
head; pooling, cosines and state shifts are batched tensor ops on the device, read back once per
shard. Shards are written as they finish, so a stopped run resumes where it was.

The input is streamed: one pass tokenizes it chunk by chunk to choose the cells (keeping ~16
bytes per cell, no tokens), one embeds the target states' cells, and one tokenizes each shard's
cells again as it comes, so host memory does not grow with the number of cells.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ispo.embedding.embed import Layout, checked_vocab
from ispo.errors import IspoError
from ispo.io.vocab import Vocab
from ispo.model.load import RANDOM_WARNING, GeneformerModel, Precision
from ispo.perturbation.index import PerturbType
from ispo.perturbation.options import (
    CellStates,
    EmbMode,
    check_options,
    wanted_tokens,
)
from ispo.perturbation.passes import (
    check_expressed,
    iter_shards,
    scan_input,
    select_cells,
    state_embeddings,
)
from ispo.perturbation.perturber import Perturber
from ispo.perturbation.tables import empty_table, shard_tables
from ispo.provenance import cpu_info, device_name, versions
from ispo.runtime import dist
from ispo.runtime.profiler import Profiler
from ispo.tokens import NO_CELLS, TokenizedCells, iter_tokenize

log = logging.getLogger(__name__)


def perturb(
    adata: ad.AnnData,
    model: GeneformerModel,
    *,
    vocab: Vocab | str | None = None,
    genes: str | list[str] = "all",
    perturb_type: PerturbType = "delete",
    rank_shift: int = 1,
    anchor_gene: str | None = None,
    combos: int = 0,
    cell_states: CellStates | dict | None = None,
    emb_mode: EmbMode = "cell",
    cell_filter: dict | None = None,
    max_ncells: int | None = None,
    cell_range: tuple[int, int] | None = None,
    emb_layer: int = -1,
    precision: Precision = "fp32",
    batch_tokens: int | None = None,
    layout: Layout = "auto",
    shard_cells: int = 64,
    layer: str | None = None,
    gene_key: str | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    load_result: bool = True,
    fast_settings: dict | None = None,
) -> pd.DataFrame:
    """Perturb genes in silico and measure how each cell's embedding moves.

    Returns the long table (one row per cell and perturbation): ``cell_id``, ``obs_index``,
    ``perturbed_ids``, ``perturbed_symbols``, ``perturb_type``, ``n_genes``, ``cos_sim``
    (Geneformer's value: mean cosine of the other genes' embeddings, or the CLS cosine),
    ``cell_cos_sim`` (cosine of the mean-pooled cell embeddings) and ``shift_<state>`` per state.
    With ``emb_mode="cell_and_gene"`` the per (perturbed, affected gene) table is in
    ``df.attrs["gene_table"]``. With ``out`` the table is written to Parquet (plus
    ``<out>.json`` metadata) shard by shard; ``resume`` continues a stopped run; with
    ``load_result=False`` the table is not read back (an empty table carrying the metadata in
    ``attrs`` is returned), so memory stays bounded whatever the number of cells. Under
    torchrun (:mod:`ispo.runtime.dist`; ``out`` required) each process runs its share of the shards
    still to do; rank 0 merges them and returns the table, the other ranks an empty DataFrame.
    ``fast_settings`` records encoder variants the caller put in place
    (:func:`ispo.tuning.settings.fast_path`: attention kernel, compile, int8) in the metadata
    and the resume fingerprint, so a resumed run cannot mix them.
    ``layout`` is how batches that mix cells of different lengths run: ``packed`` (no padding,
    varlen flash attention; the ``auto`` choice on CUDA in fp16/bf16) or ``padded`` (a mask).
    """
    vocab = checked_vocab(model, vocab)
    states = CellStates.parse(cell_states)
    targets, anchor = check_options(
        vocab, genes, perturb_type, rank_shift, anchor_gene, combos, emb_mode
    )
    writer = None
    if out is not None:
        out = Path(out)
        from ispo.io.write import check_output

        check_output(out, overwrite)
    t0 = time.perf_counter()
    # streaming passes over the input (tokenizing chunk by chunk, no pass keeps every cell's
    # tokens): what to select and check, then the target states, then each shard's cells
    max_input = min(vocab.max_input, model.config.max_len)

    def chunks(warn: bool = False) -> Iterator[TokenizedCells]:
        return iter_tokenize(
            adata, vocab, layer=layer, gene_key=gene_key, max_input=max_input, warn_empty=warn
        )

    wanted = wanted_tokens(targets, anchor, perturb_type)
    scan = scan_input(chunks(warn=True), wanted)
    if len(scan.obs_index) == 0:
        raise IspoError(NO_CELLS)
    sel = select_cells(adata, scan.obs_index, cell_filter, states, max_ncells, cell_range)
    check_expressed(scan, sel, wanted, vocab)
    pool_mode = "cls" if emb_mode == "cls" else "mean"
    kw = dict(
        method="fast",
        precision=precision,
        emb_layer=emb_layer,
        pool_mode=pool_mode,
        batch_tokens=batch_tokens,
    )
    state_emb = (
        state_embeddings(adata, scan.obs_index, model, states, chunks, **kw) if states else None
    )
    params = dict(
        genes=genes,
        perturb_type=perturb_type,
        rank_shift=rank_shift,
        anchor_gene=anchor_gene,
        combos=combos,
        emb_mode=emb_mode,
        cell_states=None if states is None else asdict(states),
        cell_filter=cell_filter,
        max_ncells=max_ncells,
        cell_range=cell_range,
        emb_layer=emb_layer,
        precision=precision,
        shard_cells=shard_cells,
        fast_settings=fast_settings,
    )
    fingerprint = {
        **params,
        "model": model.name,
        "vocab": vocab.source,
        "data": scan.digest,
        "cells": hashlib.sha1(sel.tobytes()).hexdigest(),
    }
    if out is None and dist.info().active:
        raise IspoError("under torchrun perturb writes its results shard by shard: give --out")
    if out is not None:  # under torchrun: rank 0 prepares the parts folder, every rank joins
        writer = dist.shard_writer(out, fingerprint, resume=resume, overwrite=overwrite)
    perturber = Perturber(
        model,
        vocab,
        perturb_type=perturb_type,
        rank_shift=rank_shift,
        emb_mode=emb_mode,
        emb_layer=emb_layer,
        precision=precision,
        batch_tokens=batch_tokens,
        layout=layout,
    )
    id_of_token = vocab.id_of_token()
    shards = [sel[i : i + shard_cells] for i in range(0, len(sel), shard_cells)]
    tables: dict[str, list[pd.DataFrame]] = {"cells": [], "genes": []}
    n_pert = n_cells_done = 0
    t_run = time.perf_counter()
    # under torchrun the shards still to do are dealt to the ranks (all of them in one process)
    mine = list(
        dist.mine([(i, x) for i, x in enumerate(shards) if writer is None or not writer.done(i)])
    )
    with (
        Profiler(model.device) as prof,
        torch.inference_mode(),
        tqdm(
            total=sum(len(x) for _, x in mine),
            unit="cell",
            disable=not progress,
            desc=f"perturb ({perturb_type})",
        ) as bar,
    ):
        for s_idx, cells in iter_shards(chunks(), shards, {i for i, _ in mine}):
            got = run_shard(
                perturber,
                adata,
                cells,
                np.arange(len(cells)),
                targets,
                anchor,
                state_emb,
                states,
                id_of_token,
                vocab,
            )
            n_pert += len(got["cells"])
            n_cells_done += len(cells)
            if writer is not None:
                writer.write(s_idx, got)
            else:
                for k, v in got.items():
                    tables[k].append(v)
            bar.update(len(cells))
            bar.set_postfix(perturbations_per_s=f"{n_pert / (time.perf_counter() - t_run):.1f}")
    # under torchrun: totals of all ranks, and a wait until every rank's shards are written
    n_pert, n_cells_done = (int(v) for v in dist.all_sum(n_pert, n_cells_done))
    elapsed = time.perf_counter() - t_run
    if not dist.is_main():
        return pd.DataFrame()  # rank 0 merges the shards and writes the outputs
    if writer is not None:
        writer.refresh()  # the other ranks' manifests
        missing = [i for i in range(len(shards)) if not writer.done(i)]
        if missing:
            raise IspoError(
                f"shards {missing[:5]} were not written (a process stopped?): rerun with --resume"
            )
        n_rows = writer.n_rows("cells")
    else:
        result = pd.concat(tables["cells"], ignore_index=True)
        gene_table = pd.concat(tables["genes"], ignore_index=True) if tables["genes"] else None
        n_rows = len(result)
    metadata = {
        **model.metadata(),
        "vocab": vocab.source,
        "params": params,
        "cell_states": params["cell_states"],
        "n_cells_selected": len(sel),
        "n_rows": int(n_rows),
        "n_cells_this_run": n_cells_done,
        "n_perturbations_this_run": n_pert,
        "seconds": {"total": time.perf_counter() - t0, "perturb": elapsed},
        "cells_per_s": n_cells_done / elapsed if elapsed else None,
        "perturbations_per_s": n_pert / elapsed if elapsed else None,
        "device": device_name(model.device),
        "cpu": cpu_info(),
        "profile": prof.stats.to_dict(),
        "versions": versions(),
    }
    if writer is not None:
        genes_path = out.with_name(out.stem + ".genes.parquet")
        writer.finish({"cells": out, "genes": genes_path}, metadata, out.with_suffix(".json"))
        result = pd.read_parquet(out) if load_result else empty_table(states)
        gene_table = pd.read_parquet(genes_path) if load_result and genes_path.exists() else None
    result.attrs["cell_states"] = metadata["cell_states"]
    result.attrs["metadata"] = metadata
    if gene_table is not None and len(gene_table):
        result.attrs["gene_table"] = gene_table
    if model.random_init:
        log.warning(RANDOM_WARNING.format(name=model.name, seed=model.seed))
    return result


def run_shard(
    p: Perturber,
    adata: ad.AnnData,
    cells: TokenizedCells,
    shard_sel: np.ndarray,
    targets,
    anchor,
    state_emb,
    states: CellStates | None,
    id_of_token: np.ndarray,
    vocab: Vocab,
) -> dict[str, pd.DataFrame]:
    """All perturbations of one shard of cells, as output tables (rows in input order)."""
    order = shard_sel[np.argsort(-cells.lengths[shard_sel], kind="stable")]  # longest first
    t = None if targets is None else targets.to(p.dev)
    built = p.specs(cells, order.tolist(), t, anchor)
    if not built:
        return {"cells": empty_table(states)}
    shard = p.originals(cells, built)
    results: dict[str, list] = {}
    for batch in p.row_chunks(shard):
        for chunks, got in p.oom.run(
            lambda ch: p.run_batch(shard, ch, state_emb),
            batch,
            lambda ch: p.chunk_tokens(shard, ch),
        ):
            for k, v in got.items():
                results.setdefault(k, []).append(v)
            results.setdefault("chunks", []).extend(chunks)
    return shard_tables(p, adata, cells, shard, results, states, id_of_token, vocab)
