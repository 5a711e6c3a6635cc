"""The in-silico perturbation engine: Geneformer's InSilicoPerturber numbers, computed fast.

Per shard of cells: every cell's perturbations are built on the device by index arithmetic
(:mod:`ispo.perturbation.index`); each cell's original is run once; perturbed sequences of many
cells are packed into token-budget batches (length-sorted, so padding stays small; one cell's
perturbations all share a length); the encoder runs only up to the needed layer without the MLM
head; pooling, cosines and state shifts are batched tensor ops on the device, read back once per
shard. Shards are written as they finish, so a stopped run resumes where it was.

The input is streamed in two passes (:mod:`ispo.perturbation.passes`): one tokenizes it chunk by
chunk to choose the cells (keeping ~16 bytes per cell, no tokens) and embeds the target states'
cells on the way, one tokenizes each shard's cells again as it comes, so host memory does not
grow with the number of cells.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ispo.embedding.embed import checked_vocab
from ispo.embedding.states import StateEmbeddings
from ispo.embedding.stream import UnitReader, tokenized_units
from ispo.errors import IspoError
from ispo.io.read import open_input
from ispo.io.vocab import Vocab
from ispo.model.load import RANDOM_WARNING, GeneformerModel
from ispo.perturbation.index import PerturbType
from ispo.perturbation.options import (
    CellStates,
    EmbMode,
    check_options,
    uses_cls,
    wanted_tokens,
)
from ispo.perturbation.passes import (
    InputScan,
    StateSums,
    check_expressed,
    iter_shards,
    scan_input,
    select_cells,
)
from ispo.perturbation.perturber import Perturber
from ispo.perturbation.tables import empty_table, shard_tables
from ispo.provenance import cpu_info, device_name, versions
from ispo.runtime import dist
from ispo.runtime.profiler import Profiler, ProfileStats
from ispo.settings import Layout, Pool, Precision, RunSettings
from ispo.tokens import MAX_CHUNK, NO_CELLS, TokenizedCells, cell_reader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PerturbRequest:
    """What to perturb and in which cells (everything of a run but its speed settings)."""

    genes: str | list[str] = "all"
    perturb_type: PerturbType = "delete"
    rank_shift: int = 1
    anchor_gene: str | None = None
    combos: int = 0
    cell_states: CellStates | None = None
    emb_mode: EmbMode = "cell"
    cell_filter: dict | None = None
    max_ncells: int | None = None
    cell_range: tuple[int, int] | None = None
    shard_cells: int = 64
    layer: str | None = None
    gene_key: str | None = None
    state_embs: StateEmbeddings | None = None  # given target states (else computed)
    workers: int = 0  # tokenizer processes (0: a thread)

    def params(self, settings: RunSettings) -> dict[str, Any]:
        """The run's parameters as recorded in the metadata and the resume fingerprint."""
        return dict(
            genes=self.genes,
            perturb_type=self.perturb_type,
            rank_shift=self.rank_shift,
            anchor_gene=self.anchor_gene,
            combos=self.combos,
            emb_mode=self.emb_mode,
            cell_states=None if self.cell_states is None else asdict(self.cell_states),
            state_embs=None if self.state_embs is None else self.state_embs.digest(),
            cell_filter=self.cell_filter,
            max_ncells=self.max_ncells,
            cell_range=self.cell_range,
            emb_layer=settings.emb_layer,
            precision=str(settings.precision),
            shard_cells=self.shard_cells,
            fast_settings=settings.variant(),
        )


@dataclass(frozen=True)
class Output:
    """Where and how results go: ``out`` (None: in memory), resume, overwrite, progress bar,
    and whether the written table is read back."""

    out: Path | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = False
    load_result: bool = True


def perturb(
    adata: ad.AnnData | str | Path,
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
    emb_layer: int | None = None,
    precision: Precision | str | None = None,
    batch_tokens: int | None = None,
    layout: Layout | str | None = None,
    shard_cells: int = 64,
    layer: str | None = None,
    gene_key: str | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    load_result: bool = True,
    settings: RunSettings | None = None,
    state_embs: StateEmbeddings | str | Path | None = None,
    workers: int = 0,
) -> pd.DataFrame:
    """Perturb genes in silico and measure how each cell's embedding moves.

    ``adata``: an AnnData, or a path (``.h5ad``, ``.zarr``, a tokenized dataset folder).
    Returns the long table (one row per cell and perturbation): ``cell_id``, ``obs_index``,
    ``perturbed_ids``, ``perturbed_symbols``, ``perturb_type``, ``n_genes``, ``cos_sim``
    (Geneformer's value: mean cosine of the other genes' embeddings, or the CLS cosine),
    ``cell_cos_sim`` (cosine of the mean-pooled cell embeddings) and ``shift_<state>`` per state
    (toward the mean embedding of the state's cells in the input, or toward the vectors of
    ``state_embs``: an ``ispo embed --states-out`` file or :class:`StateEmbeddings`, checked
    against the run's model, layer and pooling). ``workers`` processes tokenize ahead (0: a
    thread).
    A model with a cell classifier (a fine-tuned ``BertForSequenceClassification``) adds
    ``prob_<class>`` (after the perturbation), ``delta_prob_<class>`` (its change from the
    original cell), ``pred_class`` and ``orig_pred_class`` (most probable class after and
    before), read from the last layer in the same pass; the metadata lists the ``classes``.
    With ``emb_mode="cell_and_gene"`` (or ``"cls_and_gene"``, V2: the ``<cls>`` cosine as
    ``cos_sim`` and the shifts, as ``"cls"``) the per (perturbed, affected gene) table is in
    ``df.attrs["gene_table"]``. With ``out`` the table is written to Parquet (plus
    ``<out>.json`` metadata) shard by shard; ``resume`` continues a stopped run; with
    ``load_result=False`` the table is not read back (an empty table carrying the metadata in
    ``attrs`` is returned), so memory stays bounded whatever the number of cells. Under
    torchrun (:mod:`ispo.runtime.dist`; ``out`` required) each process runs its share of the
    shards still to do; rank 0 merges them and returns the table, the other ranks an empty
    DataFrame.

    Speed and numerics come from ``settings`` (default: the model's, as loaded), with the
    keywords ``precision`` (``auto``: bf16 where the hardware has bf16 matrix units),
    ``batch_tokens``, ``layout`` and ``emb_layer`` on top. Its encoder variant (attention
    kernel, compile, int8) is recorded in the metadata and the resume fingerprint
    (``fast_settings``), so a resumed run cannot mix them. ``layout`` is how batches that mix
    cells of different lengths run: ``packed`` (no padding, varlen flash attention; the
    ``auto`` choice on CUDA in fp16/bf16) or ``padded`` (a mask).
    """
    settings = (settings or model.settings).replace(
        precision=precision,
        batch_tokens=batch_tokens,
        layout=layout,
        emb_layer=emb_layer,
        pool=Pool.CLS if uses_cls(emb_mode) else Pool.MEAN,
    )
    request = PerturbRequest(
        genes=genes,
        perturb_type=perturb_type,
        rank_shift=rank_shift,
        anchor_gene=anchor_gene,
        combos=combos,
        cell_states=CellStates.parse(cell_states),
        emb_mode=emb_mode,
        cell_filter=cell_filter,
        max_ncells=max_ncells,
        cell_range=cell_range,
        shard_cells=shard_cells,
        layer=layer,
        gene_key=gene_key,
        state_embs=StateEmbeddings.load(state_embs)
        if isinstance(state_embs, (str, Path))
        else state_embs,
        workers=workers,
    )
    sink = Output(None if out is None else Path(out), resume, overwrite, progress, load_result)
    return run_request(adata, model.with_settings(settings), vocab, request, sink)


@dataclass
class _Plan:
    """What the first streaming pass decided: the cells, the targets, the state embeddings."""

    vocab: Vocab
    targets: torch.Tensor | None
    anchor: int | None
    chunks: Callable[..., Iterator[TokenizedCells]]
    scan: InputScan
    sel: np.ndarray
    state_emb: Any


def run_request(
    adata: ad.AnnData,
    model: GeneformerModel,
    vocab: Vocab | str | None,
    request: PerturbRequest,
    sink: Output,
) -> pd.DataFrame:
    """:func:`perturb` with its options grouped: ``model`` carries the run settings."""
    adata = open_input(adata)  # a path (or a tokenized dataset folder) is opened here
    vocab = checked_vocab(model, vocab)
    req = request
    targets, anchor = check_options(
        vocab,
        req.genes,
        req.perturb_type,
        req.rank_shift,
        req.anchor_gene,
        req.combos,
        req.emb_mode,
    )
    _check_state_embs(req, model)
    if sink.out is not None:  # every option is checked, and the output, before any work
        from ispo.io.write import check_output

        check_output(sink.out, sink.overwrite)
    t0 = time.perf_counter()
    plan = _plan(adata, model, vocab, targets, anchor, request)
    params = request.params(model.settings)
    fingerprint = {
        **params,
        "model": model.name,
        "vocab": plan.vocab.source,
        "data": plan.scan.digest,
        "cells": hashlib.sha1(plan.sel.tobytes()).hexdigest(),
    }
    if model.classifier is not None:  # a resumed run must add the same columns
        fingerprint["classes"] = list(model.classifier.classes)
    if sink.out is None and dist.info().active:
        raise IspoError("under torchrun perturb writes its results shard by shard: give --out")
    writer = None
    if sink.out is not None:  # under torchrun: rank 0 prepares the parts folder, every rank joins
        writer = dist.shard_writer(
            sink.out, fingerprint, resume=sink.resume, overwrite=sink.overwrite
        )
    shards = [
        plan.sel[i : i + request.shard_cells] for i in range(0, len(plan.sel), request.shard_cells)
    ]
    with dist.discarded_on_bad_input(writer, sink.resume):  # NaN results: no parts left
        done = _run_shards(adata, model, plan, request, shards, writer, sink.progress)
    if not dist.is_main():
        return pd.DataFrame()  # rank 0 merges the shards and writes the outputs
    metadata = {
        **model.metadata(),
        "vocab": plan.vocab.source,
        "params": params,
        "cell_states": params["cell_states"],
        "n_cells_selected": len(plan.sel),
        **done.figures(time.perf_counter() - t0),
        "device": device_name(model.device),
        "cpu": cpu_info(),
        "versions": versions(),
    }
    result = _finish(done, writer, len(shards), metadata, request.cell_states, sink)
    if model.random_init:
        log.warning(RANDOM_WARNING.format(name=model.name, seed=model.seed))
    return result


def _check_state_embs(req: PerturbRequest, model: GeneformerModel) -> None:
    """Given state embeddings need cell states and must come from this run's model, width,
    layer and pooling (checked before any work)."""
    if req.state_embs is None:
        return
    if req.cell_states is None:
        raise IspoError(
            "state embeddings need cell states: give --state-key, --start-state and "
            "--goal-state with --state-embs"
        )
    s = model.settings
    req.state_embs.check(model, s.emb_layer, str(s.pool))


def _plan(
    adata: ad.AnnData,
    model: GeneformerModel,
    vocab: Vocab,
    targets: torch.Tensor | None,
    anchor: int | None,
    req: PerturbRequest,
) -> _Plan:
    """Stream the input once to choose the cells and, in the same pass, embed the target
    states' cells (tokenizing chunk by chunk: no pass keeps every cell's tokens)."""
    src = open_input(adata)
    tok = cell_reader(
        src, vocab, layer=req.layer, gene_key=req.gene_key, max_input=model.max_input(vocab)
    )
    reader = UnitReader(tok, MAX_CHUNK, src.n_obs, src.spec, src)
    units = list(range(-(-src.n_obs // MAX_CHUNK)))

    def chunks(warn: bool = False) -> Iterator[TokenizedCells]:
        """One pass over the input, ``req.workers`` processes tokenizing ahead; they stop
        when the pass is left (the shard pass ends after its last shard)."""
        with closing(tokenized_units(replace(reader, warn_empty=warn), units, req.workers)) as it:
            for _, cells in it:
                yield cells

    states = req.cell_states
    # the target states are embedded during the scan (ispo.perturbation.passes: two passes)
    sums = StateSums(adata, model, states) if states and req.state_embs is None else None
    wanted = wanted_tokens(targets, anchor, req.perturb_type)
    scan = scan_input(chunks(warn=True), wanted, sums)
    if len(scan.obs_index) == 0:
        raise IspoError(NO_CELLS)
    sel = select_cells(
        adata, scan.obs_index, req.cell_filter, states, req.max_ncells, req.cell_range
    )
    check_expressed(scan, sel, wanted, vocab)
    state_emb = sums.means(scan.obs_index) if sums is not None else None
    if req.state_embs is not None:
        state_emb = req.state_embs.stack(states.targets, model.device)
    return _Plan(vocab, targets, anchor, chunks, scan, sel, state_emb)


@dataclass
class _Done:
    """What the shard loop did: counts, time, profile, and the tables kept in memory."""

    n_pert: int
    n_cells: int
    seconds: float
    profile: ProfileStats
    tables: dict[str, list[pd.DataFrame]]

    def figures(self, total_s: float) -> dict[str, Any]:
        """The run's counts and rates as metadata."""
        t = self.seconds
        return {
            "n_cells_this_run": self.n_cells,
            "n_perturbations_this_run": self.n_pert,
            "seconds": {"total": total_s, "perturb": t},
            "cells_per_s": self.n_cells / t if t else None,
            "perturbations_per_s": self.n_pert / t if t else None,
            "profile": self.profile.to_dict(),
        }


def _run_shards(
    adata: ad.AnnData,
    model: GeneformerModel,
    plan: _Plan,
    req: PerturbRequest,
    shards: list[np.ndarray],
    writer: Any,
    progress: bool,
) -> _Done:
    """Perturb this process's shards still to do (under torchrun the ranks share them),
    writing each as it finishes; totals are summed over all ranks."""
    perturber = Perturber(
        model,
        plan.vocab,
        perturb_type=req.perturb_type,
        rank_shift=req.rank_shift,
        emb_mode=req.emb_mode,
    )
    id_of_token = plan.vocab.id_of_token()
    tables: dict[str, list[pd.DataFrame]] = {"cells": [], "genes": []}
    n_pert = n_cells = 0
    t_run = time.perf_counter()
    todo = [(i, x) for i, x in enumerate(shards) if writer is None or not writer.done(i)]
    mine = list(dist.mine(todo))
    bar = tqdm(
        total=sum(len(x) for _, x in mine),
        unit="cell",
        disable=not progress,
        desc=f"perturb ({req.perturb_type})",
    )
    with Profiler(model.device) as prof, torch.inference_mode(), bar:
        for s_idx, cells in iter_shards(plan.chunks(), shards, {i for i, _ in mine}):
            got = run_shard(
                perturber,
                adata,
                cells,
                plan.targets,
                plan.anchor,
                plan.state_emb,
                req.cell_states,
                id_of_token,
                plan.vocab,
            )
            n_pert += len(got["cells"])
            n_cells += len(cells)
            if writer is not None:
                writer.write(s_idx, got)
            else:
                for k, v in got.items():
                    tables[k].append(v)
            bar.update(len(cells))
            bar.set_postfix(perturbations_per_s=f"{n_pert / (time.perf_counter() - t_run):.1f}")
    # under torchrun: totals of all ranks, and a wait until every rank's shards are written
    n_pert, n_cells = (int(v) for v in dist.all_sum(n_pert, n_cells))
    return _Done(n_pert, n_cells, time.perf_counter() - t_run, prof.stats, tables)


def _finish(
    done: _Done,
    writer: Any,
    n_shards: int,
    metadata: dict[str, Any],
    states: CellStates | None,
    sink: Output,
) -> pd.DataFrame:
    """The result table with its metadata: merged and written from the shards (rank 0), or
    concatenated in memory."""
    gene_table = None
    if writer is not None:
        writer.refresh()  # the other ranks' manifests
        missing = [i for i in range(n_shards) if not writer.done(i)]
        if missing:
            raise IspoError(
                f"shards {missing[:5]} were not written (a process stopped?): rerun with --resume"
            )
        metadata["n_rows"] = int(writer.n_rows("cells"))
        out = sink.out
        genes_path = out.with_name(out.stem + ".genes.parquet")
        writer.finish({"cells": out, "genes": genes_path}, metadata, out.with_suffix(".json"))
        classes = metadata.get("classes")
        result = pd.read_parquet(out) if sink.load_result else empty_table(states, classes)
        if sink.load_result and genes_path.exists():
            gene_table = pd.read_parquet(genes_path)
    else:
        result = pd.concat(done.tables["cells"], ignore_index=True)
        if done.tables["genes"]:
            gene_table = pd.concat(done.tables["genes"], ignore_index=True)
        metadata["n_rows"] = len(result)
    result.attrs["cell_states"] = metadata["cell_states"]
    result.attrs["metadata"] = metadata
    if gene_table is not None and len(gene_table):
        result.attrs["gene_table"] = gene_table
    return result


def run_shard(
    p: Perturber,
    adata: ad.AnnData,
    cells: TokenizedCells,
    targets,
    anchor,
    state_emb,
    states: CellStates | None,
    id_of_token: np.ndarray,
    vocab: Vocab,
) -> dict[str, pd.DataFrame]:
    """All perturbations of one shard of cells, as output tables (rows in input order)."""
    order = np.argsort(-cells.lengths, kind="stable")  # longest first
    t = None if targets is None else targets.to(p.dev)
    built = p.specs(cells, order.tolist(), t, anchor)
    if not built:
        clf = p.model.classifier
        return {"cells": empty_table(states, None if clf is None else list(clf.classes))}
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
    p.runner.finite.check()  # no NaN/Inf reaches the tables (ispo.runtime.finite)
    return shard_tables(p, adata, cells, shard, results, states, id_of_token, vocab)
