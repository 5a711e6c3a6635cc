"""The in-silico perturbation engine: Geneformer's InSilicoPerturber numbers, computed fast.

Per shard of cells: every cell's perturbations are built on the device by index arithmetic
(:mod:`ispo.perturb.index`); each cell's original is run once; perturbed sequences of many cells
are packed into token-budget batches (length-sorted, so padding stays small; one cell's
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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ispo import dist
from ispo.bench.profiler import Profiler
from ispo.data.vocab import Vocab
from ispo.errors import IspoError
from ispo.infer.batching import token_budget_batches
from ispo.infer.embed import Layout, checked_vocab, default_batch_tokens, embed_cells
from ispo.infer.oom import OomSplitter
from ispo.infer.pool import gene_mask
from ispo.model.encoder import Encoder, Packed
from ispo.model.load import RANDOM_WARNING, GeneformerModel, Precision
from ispo.perturb.index import PerturbType, Perturbations, each_gene, gene_set, with_anchor
from ispo.provenance import device_name, versions
from ispo.tokenize import NO_CELLS, TokenizedCells, iter_tokenize

log = logging.getLogger(__name__)
EmbMode = Literal["cell", "cell_and_gene", "cls"]
PERTURB_TYPES = ("delete", "overexpress", "inhibit", "activate")


@dataclass(frozen=True)
class CellStates:
    """Which cells to perturb (``start_state``) and which states to measure shifts toward."""

    state_key: str
    start_state: str
    goal_state: str
    alt_states: tuple[str, ...] = ()

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.goal_state, *self.alt_states)

    @classmethod
    def parse(cls, spec: "CellStates | dict | None") -> "CellStates | None":
        if spec is None or isinstance(spec, CellStates):
            return spec
        try:
            return cls(spec["state_key"], str(spec["start_state"]), str(spec["goal_state"]),
                       tuple(str(s) for s in spec.get("alt_states") or ()))
        except KeyError as exc:
            raise IspoError(f"cell_states lacks {exc.args[0]!r}: give state_key, start_state, "
                            "goal_state (and optionally alt_states)") from exc


@dataclass
class _Shard:
    """Device-side inputs of one shard: specs and originals of its cells."""

    cells: list[int]  # positions in the TokenizedCells, length-sorted
    specs: list[Perturbations]
    orig_hidden: torch.Tensor  # (sum of original lengths, h) original hidden states, stacked
    orig_start: list[int]  # row of each cell's first token in orig_hidden
    orig_mean: torch.Tensor  # (n_cells, h) original mean-pooled cell embeddings
    orig_cell: torch.Tensor  # (n_cells, h) original cell embeddings of the mode (mean or CLS)
    gene_tokens: list[torch.Tensor] = field(default_factory=list)


class Perturber:
    """Runs the perturbations of selected cells with one model, vocabulary and setting."""

    def __init__(self, model: GeneformerModel, vocab: Vocab, *, perturb_type: PerturbType,
                 rank_shift: int, emb_mode: EmbMode, emb_layer: int, precision: Precision,
                 batch_tokens: int | None, layout: Layout = "auto") -> None:
        self.model, self.vocab = model, vocab
        self.kind, self.rank_shift, self.emb_mode = perturb_type, rank_shift, emb_mode
        self.dev = model.device
        self.enc: Encoder = model.encoder(model.layers_for(emb_layer), precision)
        self.budget = batch_tokens or default_batch_tokens(self.dev)
        self.has_cls = vocab.version == 2
        self.max_genes = min(vocab.max_input, model.config.max_len) - 2 * self.has_cls
        self.pad = model.config.pad_id
        self.oom = OomSplitter(what="perturb")  # splits a batch that runs out of memory
        # batches mixing cells of different lengths need a mask, which rules out flash
        # attention; packed, they run varlen flash attention with no padding (CUDA, fp16/bf16)
        half_cuda = self.dev.type == "cuda" and precision in ("fp16", "bf16")
        self.packed = layout == "packed" or (layout == "auto" and half_cuda)

    # -- building ---------------------------------------------------------------------------
    def specs(self, cells: TokenizedCells, idx: list[int], targets: torch.Tensor | None,
              anchor: int | None) -> list[tuple[int, Perturbations]]:
        out = []
        s = int(self.has_cls)
        for i in idx:
            cell = torch.from_numpy(cells.cell(i).astype(np.int64)).to(self.dev)
            genes = cell[s : len(cell) - s]
            if anchor is not None:
                hit = (genes == anchor).nonzero()
                if len(hit) == 0 or len(genes) < 2:  # no anchor, or no other gene to pair
                    continue
                spec = with_anchor(genes, int(hit[0, 0]), self.kind, max_genes=self.max_genes)
            elif targets is None:
                spec = each_gene(genes, self.kind, rank_shift=self.rank_shift,
                                 max_genes=self.max_genes)
            else:
                spec = gene_set(genes, targets, self.kind, rank_shift=self.rank_shift,
                                max_genes=self.max_genes)
            # skip perturbations that leave no other gene to compare (e.g. a cell's only gene
            # deleted): they would give NaN, or an empty sequence
            if spec is not None and len(spec) and spec.aff_orig.shape[1]:
                out.append((i, spec))
        return out

    def _wrap(self, genes: torch.Tensor) -> torch.Tensor:
        """Add ``<cls>``/``<eos>`` around rows of gene tokens (V2)."""
        if not self.has_cls:
            return genes
        P = genes.shape[0]
        cls = torch.full((P, 1), self.vocab.cls_id, dtype=genes.dtype, device=genes.device)
        eos = torch.full((P, 1), self.vocab.eos_id, dtype=genes.dtype, device=genes.device)
        return torch.cat([cls, genes, eos], 1)

    def _cell_embs(self, hidden: torch.Tensor, lens: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean-pooled, state) cell embeddings; the state one is the CLS in ``cls`` mode."""
        m = gene_mask(lens, hidden.shape[1], self.has_cls).float()
        mean = torch.bmm(m[:, None], hidden.float()).squeeze(1) / m.sum(1, keepdim=True)
        return mean, hidden[:, 0].float() if self.emb_mode == "cls" else mean

    def _padded(self, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None,
                                                         torch.Tensor]:
        """Stack rows of token blocks into one padded batch; mask only if lengths differ."""
        width = max(r.shape[1] for r in rows)
        lens = torch.cat([torch.full((r.shape[0],), r.shape[1], device=self.dev) for r in rows])
        ids = torch.cat([F.pad(r, (0, width - r.shape[1]), value=self.pad) for r in rows])
        uniform = all(r.shape[1] == width for r in rows)
        return ids, None if uniform else lens, lens

    def _encode(self, ids: torch.Tensor, mask_lens: torch.Tensor | None,
                lens: torch.Tensor) -> torch.Tensor:
        """Hidden states (R, L, h) of a padded batch; packed when lengths differ (see
        ``self.packed``), then laid back out padded (zeros past each row's length)."""
        if mask_lens is None or not self.packed:
            return self.enc(ids, mask_lens)
        keep = torch.arange(ids.shape[1], device=ids.device)[None] < lens[:, None]
        flat = self.enc(ids[keep], Packed.from_lengths(lens))  # row-major: the packing order
        hidden = flat.new_zeros(*ids.shape, flat.shape[-1])
        hidden[keep] = flat
        return hidden

    def _forward(self, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask_lens, lens = self._padded(rows)
        return self._encode(ids, mask_lens, lens), lens

    def chunk_tokens(self, shard: _Shard, chunks: list[tuple[int, int, int]]) -> int:
        """Padded tokens of a batch of (cell, row range) chunks (what the budget counts)."""
        width = max(shard.specs[c].tokens.shape[1] for c, _, _ in chunks) + 2 * self.has_cls
        return sum(b - a for _, a, b in chunks) * width

    # -- running ----------------------------------------------------------------------------
    def originals(self, cells: TokenizedCells, built: list[tuple[int, Perturbations]]) -> _Shard:
        """Hidden states and cell embeddings of each cell's original, once per cell."""
        s = int(self.has_cls)
        seqs = []
        for i, spec in built:
            cell = torch.from_numpy(cells.cell(i).astype(np.int64)).to(self.dev)
            seqs.append(self._wrap(cell[s : s + spec.orig_len][None])[0])
        lengths = np.array([len(q) for q in seqs])
        hidden_of: list[torch.Tensor | None] = [None] * len(seqs)
        mean_emb = torch.empty(len(seqs), self.model.config.hidden, device=self.dev)
        cell_emb = torch.empty_like(mean_emb)
        for batch in token_budget_batches(lengths, self.budget):
            for idx, (hidden, lens) in self.oom.run(
                    lambda j: self._forward([seqs[x][None] for x in j]), batch,
                    lambda j: len(j) * int(lengths[j].max())):
                rows = torch.as_tensor(idx, device=self.dev)
                mean_emb[rows], cell_emb[rows] = self._cell_embs(hidden, lens)
                for row, j in enumerate(idx):
                    hidden_of[j] = hidden[row, : lengths[j]]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()
        return _Shard([i for i, _ in built], [sp for _, sp in built], torch.cat(hidden_of),
                      starts, mean_emb, cell_emb)

    def run_batch(self, shard: _Shard, chunks: list[tuple[int, int, int]],
                  states: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Forward one token-budget batch of perturbation rows and compare with originals."""
        s = int(self.has_cls)
        ids, mask_lens, lens = self._padded(
            [self._wrap(shard.specs[c].tokens[a:b]) for c, a, b in chunks])
        hidden = self._encode(ids, mask_lens, lens)  # (R, L, h)
        cell_of_row = torch.cat([torch.full((b - a,), c, device=self.dev) for c, a, b in chunks])
        orig_cell = shard.orig_cell[cell_of_row]
        pert_mean, pert_cell = self._cell_embs(hidden, lens)
        orig_mean = shard.orig_mean[cell_of_row]
        out = {"cell_cos_sim": F.cosine_similarity(pert_mean, orig_mean, dim=-1)}
        if self.emb_mode == "cls":
            out["cos_sim"] = F.cosine_similarity(pert_cell, orig_cell, dim=-1)
        else:
            k = max(shard.specs[c].aff_orig.shape[1] for c, _, _ in chunks)
            aff_o = torch.cat([F.pad(shard.specs[c].aff_orig[a:b] + shard.orig_start[c] + s,
                                     (0, k - shard.specs[c].aff_orig.shape[1]))
                               for c, a, b in chunks])
            aff_p = torch.cat([F.pad(shard.specs[c].aff_pert[a:b] + s,
                                     (0, k - shard.specs[c].aff_pert.shape[1]))
                               for c, a, b in chunks])
            kmask = torch.cat([F.pad(torch.ones(b - a, shard.specs[c].aff_orig.shape[1],
                                                device=self.dev),
                                     (0, k - shard.specs[c].aff_orig.shape[1]))
                               for c, a, b in chunks])
            orig = shard.orig_hidden[aff_o]  # (R, k, h)
            pert = hidden.gather(1, aff_p[..., None].expand(-1, -1, hidden.shape[2]))
            gene_cos = F.cosine_similarity(orig.float(), pert.float(), dim=-1) * kmask
            out["cos_sim"] = gene_cos.sum(1) / kmask.sum(1)
            if self.emb_mode == "cell_and_gene":
                out["gene_cos"] = gene_cos
        if states is not None:
            out["shifts"] = (F.cosine_similarity(pert_cell[:, None], states[None], dim=-1)
                             - F.cosine_similarity(orig_cell[:, None], states[None], dim=-1))
        return out

    def row_chunks(self, shard: _Shard) -> list[list[tuple[int, int, int]]]:
        """Group (cell, row range) chunks into batches of at most ``budget`` tokens."""
        batches, current, used = [], [], 0
        for c, spec in enumerate(shard.specs):
            width = spec.tokens.shape[1] + 2 * int(self.has_cls)
            per_batch = max(1, self.budget // width)
            a = 0
            while a < len(spec):
                room = max(1, (self.budget - used) // width) if current else per_batch
                b = min(len(spec), a + room)
                current.append((c, a, b))
                used += (b - a) * width
                a = b
                if used + width > self.budget:
                    batches.append(current)
                    current, used = [], 0
        if current:
            batches.append(current)
        return batches


def _select_cells(adata: ad.AnnData, obs_index: np.ndarray, cell_filter: dict | None,
                  states: CellStates | None, max_ncells: int | None,
                  cell_range: tuple[int, int] | None) -> np.ndarray:
    """Positions (among the tokenized cells, rows ``obs_index``) of the cells to perturb."""
    keep = np.ones(len(obs_index), dtype=bool)
    obs = adata.obs.iloc[obs_index]
    for key, allowed in (cell_filter or {}).items():
        if key not in obs.columns:
            raise IspoError(f"filter key {key!r} is not an obs column: choose one of "
                            f"{list(obs.columns)[:10]}")
        allowed = allowed if isinstance(allowed, (list, tuple, set)) else [allowed]
        keep &= obs[key].astype(str).isin([str(a) for a in allowed]).to_numpy()
    if states is not None:
        if states.state_key not in obs.columns:
            raise IspoError(f"state_key {states.state_key!r} is not an obs column: choose one "
                            f"of {list(obs.columns)[:10]}")
        keep &= (obs[states.state_key].astype(str) == states.start_state).to_numpy()
    sel = np.flatnonzero(keep)
    if cell_range is not None:
        sel = sel[cell_range[0] : cell_range[1]]
    if max_ncells is not None:
        sel = sel[:max_ncells]
    if len(sel) == 0:
        what = f"start state {states.start_state!r}" if states else "the filters"
        raise IspoError(f"no cell left to perturb after {what}: check the filters, the state "
                        "labels and the cell range")
    return sel


def _state_embeddings(adata: ad.AnnData, obs_index: np.ndarray, model: GeneformerModel,
                      states: CellStates, chunks: Callable[[], Iterator[TokenizedCells]],
                      **kw) -> torch.Tensor:
    """Mean cell embedding of each target state (same layer and pooling as the run), embedded
    chunk by chunk as ``chunks()`` tokenizes the input (no state's cells are held at once)."""
    if states.state_key not in adata.obs.columns:
        raise IspoError(f"state_key {states.state_key!r} is not an obs column: choose one of "
                        f"{list(adata.obs.columns)[:10]}")
    all_labels = adata.obs[states.state_key].astype(str).to_numpy()
    known = sorted(set(all_labels[obs_index]))
    for st in (states.start_state, *states.targets):
        if st not in known:
            raise IspoError(f"state {st!r} not found in obs[{states.state_key!r}]: known states "
                            f"are {known[:10]}")
    sums = np.zeros((len(states.targets), model.config.hidden))
    counts = np.zeros(len(states.targets))
    for part in chunks():
        labels = all_labels[part.obs_index]
        for j, st in enumerate(states.targets):
            idx = np.flatnonzero(labels == st)
            if len(idx):
                sums[j] += embed_cells(part.subset(idx), model, **kw).sum(0, dtype=np.float64)
                counts[j] += len(idx)
    return torch.from_numpy((sums / counts[:, None]).astype(np.float32)).to(model.device)


@dataclass
class _Scan:
    """What one streaming pass over the input keeps: no tokens, only what selection, the
    expression check and the resume fingerprint need (~16 bytes per cell)."""

    obs_index: np.ndarray  # input row of each tokenized cell
    digest: str  # sha1 of every cell's tokens, in order (the data in the fingerprint)
    present: np.ndarray  # (n_cells, n_wanted): the cell expresses wanted token j


def _scan(chunks: Iterator[TokenizedCells], wanted: list[int]) -> _Scan:
    sha = hashlib.sha1()
    obs, present = [], []
    for part in chunks:
        sha.update(part.tokens.tobytes())
        obs.append(part.obs_index)
        hit = np.zeros((len(part), len(wanted)), dtype=bool)
        if wanted:  # genes=all and overexpress lists need no check: skip the per-token pass
            cell_of = np.repeat(np.arange(len(part)), part.lengths)
            for j, tok in enumerate(wanted):
                hit[cell_of[part.tokens == tok], j] = True
        present.append(hit)
    return _Scan(np.concatenate(obs) if obs else np.zeros(0, np.int64), sha.hexdigest(),
                 np.concatenate(present) if present else np.zeros((0, len(wanted)), bool))


def _shard_tokens(chunks: Iterator[TokenizedCells], shards: list[np.ndarray],
                  wanted: set[int]) -> Iterator[tuple[int, TokenizedCells]]:
    """``(i, cells of shard i)`` for the shards in ``wanted``, in order, from one streaming
    pass (shards hold positions among the tokenized cells, ascending): a shard's tokens are
    kept only until it is yielded, so memory does not grow with the number of cells."""
    if not wanted:
        return
    k, base, pieces = 0, 0, []
    for part in chunks:
        top = base + len(part)
        while k < len(shards):
            pos = shards[k]
            if k in wanted:
                here = pos[(pos >= base) & (pos < top)]
                if len(here):
                    pieces.append(part.subset(here - base))
            if pos[-1] >= top:
                break  # shard k goes on in the next chunk
            if k in wanted:
                yield k, TokenizedCells.concat(pieces, part.has_cls)
            k, pieces = k + 1, []
        base = top
        if k > max(wanted):
            return  # every wanted shard is out: read no further


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
    torchrun (:mod:`ispo.dist`; ``out`` required) each process runs its share of the shards
    still to do; rank 0 merges them and returns the table, the other ranks an empty DataFrame.
    ``fast_settings`` records encoder variants the caller put in place
    (:func:`ispo.tune.settings.fast_path`: attention kernel, compile, int8) in the metadata
    and the resume fingerprint, so a resumed run cannot mix them.
    ``layout`` is how batches that mix cells of different lengths run: ``packed`` (no padding,
    varlen flash attention; the ``auto`` choice on CUDA in fp16/bf16) or ``padded`` (a mask).
    """
    vocab = checked_vocab(model, vocab)
    states = CellStates.parse(cell_states)
    targets, anchor = _check_options(vocab, genes, perturb_type, rank_shift, anchor_gene, combos,
                                     emb_mode)
    writer = None
    if out is not None:
        out = Path(out)
        from ispo.data.write import check_output

        check_output(out, overwrite)
    t0 = time.perf_counter()
    # streaming passes over the input (tokenizing chunk by chunk, no pass keeps every cell's
    # tokens): what to select and check, then the target states, then each shard's cells
    max_input = min(vocab.max_input, model.config.max_len)

    def chunks(warn: bool = False) -> Iterator[TokenizedCells]:
        return iter_tokenize(adata, vocab, layer=layer, gene_key=gene_key, max_input=max_input,
                             warn_empty=warn)

    wanted = _wanted(targets, anchor, perturb_type)
    scan = _scan(chunks(warn=True), wanted)
    if len(scan.obs_index) == 0:
        raise IspoError(NO_CELLS)
    sel = _select_cells(adata, scan.obs_index, cell_filter, states, max_ncells, cell_range)
    _check_expressed(scan, sel, wanted, vocab)
    pool_mode = "cls" if emb_mode == "cls" else "mean"
    kw = dict(method="fast", precision=precision, emb_layer=emb_layer, pool_mode=pool_mode,
              batch_tokens=batch_tokens)
    state_emb = (_state_embeddings(adata, scan.obs_index, model, states, chunks, **kw)
                 if states else None)
    params = dict(genes=genes, perturb_type=perturb_type, rank_shift=rank_shift,
                  anchor_gene=anchor_gene, combos=combos, emb_mode=emb_mode,
                  cell_states=None if states is None else asdict(states),
                  cell_filter=cell_filter, max_ncells=max_ncells, cell_range=cell_range,
                  emb_layer=emb_layer, precision=precision, shard_cells=shard_cells,
                  fast_settings=fast_settings)
    fingerprint = {**params, "model": model.name, "vocab": vocab.source,
                   "data": scan.digest,
                   "cells": hashlib.sha1(sel.tobytes()).hexdigest()}
    if out is None and dist.info().active:
        raise IspoError("under torchrun perturb writes its results shard by shard: give --out")
    if out is not None:  # under torchrun: rank 0 prepares the parts folder, every rank joins
        writer = dist.shard_writer(out, fingerprint, resume=resume, overwrite=overwrite)
    perturber = Perturber(model, vocab, perturb_type=perturb_type, rank_shift=rank_shift,
                          emb_mode=emb_mode, emb_layer=emb_layer, precision=precision,
                          batch_tokens=batch_tokens, layout=layout)
    id_of_token = vocab.id_of_token()
    shards = [sel[i : i + shard_cells] for i in range(0, len(sel), shard_cells)]
    tables: dict[str, list[pd.DataFrame]] = {"cells": [], "genes": []}
    n_pert = n_cells_done = 0
    t_run = time.perf_counter()
    # under torchrun the shards still to do are dealt to the ranks (all of them in one process)
    mine = list(dist.mine([(i, x) for i, x in enumerate(shards)
                           if writer is None or not writer.done(i)]))
    with Profiler(model.device) as prof, torch.inference_mode(), tqdm(
            total=sum(len(x) for _, x in mine), unit="cell", disable=not progress,
            desc=f"perturb ({perturb_type})") as bar:
        for s_idx, cells in _shard_tokens(chunks(), shards, {i for i, _ in mine}):
            got = _run_shard(perturber, adata, cells, np.arange(len(cells)), targets, anchor,
                             state_emb, states, id_of_token, vocab)
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
            raise IspoError(f"shards {missing[:5]} were not written (a process stopped?): rerun "
                            "with --resume")
        n_rows = writer.n_rows("cells")
    else:
        result = pd.concat(tables["cells"], ignore_index=True)
        gene_table = pd.concat(tables["genes"], ignore_index=True) if tables["genes"] else None
        n_rows = len(result)
    metadata = {**model.metadata(), "vocab": vocab.source, "params": params,
                "cell_states": params["cell_states"],
                "n_cells_selected": int(len(sel)), "n_rows": int(n_rows),
                "n_cells_this_run": n_cells_done, "n_perturbations_this_run": n_pert,
                "seconds": {"total": time.perf_counter() - t0, "perturb": elapsed},
                "cells_per_s": n_cells_done / elapsed if elapsed else None,
                "perturbations_per_s": n_pert / elapsed if elapsed else None,
                "device": device_name(model.device), "profile": prof.stats.to_dict(),
                "versions": versions()}
    if writer is not None:
        genes_path = out.with_name(out.stem + ".genes.parquet")
        writer.finish({"cells": out, "genes": genes_path}, metadata, out.with_suffix(".json"))
        result = pd.read_parquet(out) if load_result else _empty_table(states)
        gene_table = (pd.read_parquet(genes_path) if load_result and genes_path.exists()
                      else None)
    result.attrs["cell_states"] = metadata["cell_states"]
    result.attrs["metadata"] = metadata
    if gene_table is not None and len(gene_table):
        result.attrs["gene_table"] = gene_table
    if model.random_init:
        log.warning(RANDOM_WARNING.format(name=model.name, seed=model.seed))
    return result


def _check_options(vocab: Vocab, genes, perturb_type, rank_shift, anchor_gene, combos,
                   emb_mode) -> tuple[torch.Tensor | None, int | None]:
    """Validate option combinations; returns (target tokens or None, anchor token or None)."""
    if perturb_type not in PERTURB_TYPES:
        raise IspoError(f"perturb_type must be one of {', '.join(PERTURB_TYPES)}, "
                        f"not {perturb_type!r}")
    if rank_shift not in (1, 2, 3):
        raise IspoError(f"rank_shift must be 1, 2 or 3 quartiles, not {rank_shift}")
    if emb_mode not in ("cell", "cell_and_gene", "cls"):
        raise IspoError(f"emb_mode must be cell, cell_and_gene or cls, not {emb_mode!r}")
    if emb_mode == "cls" and vocab.version != 2:
        raise IspoError("emb_mode 'cls' needs a V2 vocabulary (with <cls>): use 'cell' for V1")
    if combos not in (0, 1):
        raise IspoError(f"combos must be 0 or 1 (pairs with the anchor gene), not {combos}")
    if combos == 1 and anchor_gene is None:
        raise IspoError("combos=1 needs an anchor gene (--anchor-gene)")
    if anchor_gene is not None:
        if genes != "all":
            raise IspoError("an anchor gene pairs with every gene of the cell: use genes='all' "
                            "with --anchor-gene, or a gene list without it")
        if perturb_type not in ("delete", "overexpress"):
            raise IspoError("anchor pairs support delete and overexpress")
        return None, vocab.token_dict[vocab.resolve_gene(anchor_gene)]
    if isinstance(genes, str):
        if genes == "all":
            return None, None
        genes = [g for g in genes.split(",") if g]
    if not genes:
        raise IspoError("no gene to perturb: give 'all' or a list of genes")
    if perturb_type in ("inhibit", "activate") and len(genes) > 1:
        raise IspoError("inhibit/activate take one gene (or 'all'): run one gene at a time")
    ids = [vocab.resolve_gene(g) for g in genes]
    if len(set(ids)) != len(ids):
        raise IspoError(f"the gene list names a gene twice ({', '.join(genes)}): list each once")
    return torch.tensor([vocab.token_dict[g] for g in ids], dtype=torch.long), None


def _wanted(targets: torch.Tensor | None, anchor: int | None, perturb_type: str) -> list[int]:
    """Tokens some selected cell must express (a gene to delete or move, an anchor)."""
    if anchor is not None:
        return [anchor]
    return [] if targets is None or perturb_type == "overexpress" else targets.tolist()


def _check_expressed(scan: "_Scan", sel: np.ndarray, wanted: list[int], vocab: Vocab) -> None:
    """A gene that no selected cell expresses cannot be deleted/moved: say so before running."""
    id_of = vocab.id_of_token()
    for j, tok in enumerate(wanted):
        if not scan.present[sel, j].any():
            gid = id_of[tok]
            raise IspoError(f"gene {vocab.symbol(gid)} ({gid}) is not expressed in any selected "
                            "cell: choose another gene or other cells")


def _run_shard(p: Perturber, adata: ad.AnnData, cells: TokenizedCells, shard_sel: np.ndarray,
               targets, anchor, state_emb, states: CellStates | None, id_of_token: np.ndarray,
               vocab: Vocab) -> dict[str, pd.DataFrame]:
    """All perturbations of one shard of cells, as output tables (rows in input order)."""
    order = shard_sel[np.argsort(-cells.lengths[shard_sel], kind="stable")]  # longest first
    t = None if targets is None else targets.to(p.dev)
    built = p.specs(cells, order.tolist(), t, anchor)
    if not built:
        return {"cells": _empty_table(states)}
    shard = p.originals(cells, built)
    results: dict[str, list] = {}
    for batch in p.row_chunks(shard):
        for chunks, got in p.oom.run(lambda ch: p.run_batch(shard, ch, state_emb), batch,
                                     lambda ch: p.chunk_tokens(shard, ch)):
            for k, v in got.items():
                results.setdefault(k, []).append(v)
            results.setdefault("chunks", []).extend(chunks)
    return _tables(p, adata, cells, shard, results, states, id_of_token, vocab)


def _empty_table(states: CellStates | None) -> pd.DataFrame:
    # typed like a full table, so concatenating an empty shard changes no column's dtype
    cols = {"cell_id": object, "obs_index": np.int64, "perturbed_ids": object,
            "perturbed_symbols": object, "perturb_type": object, "n_genes": np.int32,
            "cos_sim": np.float32, "cell_cos_sim": np.float32}
    cols |= {f"shift_{s}": np.float32 for s in (states.targets if states else ())}
    return pd.DataFrame({c: np.array([], dtype=t) for c, t in cols.items()})


def _tables(p: Perturber, adata, cells, shard: _Shard, res: dict, states, id_of_token,
            vocab: Vocab) -> dict[str, pd.DataFrame]:
    """Output tables of one shard; rows sorted by input cell, then perturbation order."""
    chunks = res["chunks"]
    cell_rows = np.concatenate([np.full(b - a, c) for c, a, b in chunks])
    pos = np.array([shard.cells[c] for c in cell_rows])
    obs_index = cells.obs_index[pos]
    within = np.concatenate([np.arange(a, b) for _, a, b in chunks])
    labels = torch.cat([shard.specs[c].perturbed[a:b] for c, a, b in chunks]).cpu().numpy()
    ids = id_of_token[labels]
    df = pd.DataFrame({
        "cell_id": adata.obs_names.to_numpy()[obs_index].astype(str),
        "obs_index": obs_index.astype(np.int64),
        "perturbed_ids": ["+".join(r) for r in ids],
        "perturbed_symbols": ["+".join(vocab.symbol(g) for g in r) for r in ids],
        "perturb_type": p.kind,
        "n_genes": (cells.lengths[pos] - 2 * int(p.has_cls)).astype(np.int32),
        "cos_sim": torch.cat(res["cos_sim"]).cpu().numpy().astype(np.float32),
        "cell_cos_sim": torch.cat(res["cell_cos_sim"]).cpu().numpy().astype(np.float32),
    })
    if states is not None:
        shifts = torch.cat(res["shifts"]).cpu().numpy()
        for j, st in enumerate(states.targets):
            df[f"shift_{st}"] = shifts[:, j].astype(np.float32)
    perm = np.lexsort((within, obs_index))  # batch order -> input order
    out = {"cells": df.iloc[perm].reset_index(drop=True)}
    if "gene_cos" in res:
        out["genes"] = _gene_table(p, cells, shard, res["gene_cos"], chunks, df, perm,
                                   id_of_token, vocab)
    return out


def _gene_table(p: Perturber, cells, shard: _Shard, gene_cos: list[torch.Tensor], chunks,
                df: pd.DataFrame, perm: np.ndarray, id_of_token, vocab: Vocab) -> pd.DataFrame:
    """One row per (cell, perturbation, affected gene), in the cell table's row order."""
    s = int(p.has_cls)
    rows = [r for t in gene_cos for r in t.split(1)]  # batch rows, each (1, k of its batch)
    row_of, tokens, cos = [], [], []
    start = 0
    for c, a, b in chunks:
        spec = shard.specs[c]
        k = spec.aff_orig.shape[1]
        cell = cells.cell(shard.cells[c])[s:]
        tokens.append(cell[spec.aff_orig[a:b].cpu().numpy()].ravel())
        cos.append(torch.cat(rows[start : start + b - a])[:, :k].cpu().numpy().ravel())
        row_of.append(np.repeat(np.arange(start, start + b - a), k))
        start += b - a
    row_of = np.concatenate(row_of)
    rank = np.empty_like(perm)
    rank[perm] = np.arange(len(perm))
    order = np.argsort(rank[row_of], kind="stable")
    row_of = row_of[order]
    aff_ids = id_of_token[np.concatenate(tokens)[order]]
    return pd.DataFrame({
        "cell_id": df["cell_id"].to_numpy()[row_of],
        "obs_index": df["obs_index"].to_numpy()[row_of],
        "perturbed_ids": df["perturbed_ids"].to_numpy()[row_of],
        "affected_id": aff_ids,
        "affected_symbol": [vocab.symbol(g) for g in aff_ids],
        "cos_sim": np.concatenate(cos)[order].astype(np.float32),
    })
