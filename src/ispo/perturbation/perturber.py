"""The perturber: each shard's perturbed sequences built on the device by index arithmetic
(:mod:`ispo.perturbation.index`), each cell's original run once, perturbed rows of many cells in
token-budget batches, and pooling, cosines and state shifts as batched tensor ops. A model with
a cell classifier gives each row's class probabilities and their change from the original cell
in the same encoder pass (the runner's classifier tail)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ispo.io.vocab import Vocab
from ispo.model.encoder import Encoder
from ispo.model.load import GeneformerModel
from ispo.perturbation.index import Perturbations, PerturbType, each_gene, gene_set, with_anchor
from ispo.perturbation.options import EmbMode, keeps_genes, uses_cls
from ispo.runtime.batching import token_budget_batches
from ispo.runtime.oom import OomSplitter
from ispo.runtime.runner import Encoded, Runner, Tokens, choose_layout, default_batch_tokens
from ispo.settings import Layout
from ispo.tokens import TokenizedCells


@dataclass
class Shard:
    """Device-side inputs of one shard: specs and originals of its cells."""

    cells: list[int]  # positions in the TokenizedCells, length-sorted
    rows: np.ndarray  # (n_cells,) their input rows (what an error names)
    specs: list[Perturbations]
    orig_hidden: torch.Tensor  # (sum of original lengths, h) original hidden states, stacked
    orig_norm: torch.Tensor  # (sum of original lengths,) their fp32 norms
    orig_start: list[int]  # row of each cell's first token in orig_hidden
    orig_mean: torch.Tensor  # (n_cells, h) original mean-pooled cell embeddings
    orig_cell: torch.Tensor  # (n_cells, h) original cell embeddings of the mode (mean or CLS)
    orig_probs: torch.Tensor | None = None  # (n_cells, classes) original class probabilities


class Perturber:
    """Runs the perturbations of selected cells with one model, vocabulary and setting; the
    speed settings (layer, precision, token budget, layout, encoder variant) are the model's
    (``model.settings``), the ones the run was loaded with."""

    def __init__(
        self,
        model: GeneformerModel,
        vocab: Vocab,
        *,
        perturb_type: PerturbType,
        rank_shift: int,
        emb_mode: EmbMode,
    ) -> None:
        self.model, self.vocab = model, vocab
        self.kind, self.rank_shift, self.emb_mode = perturb_type, rank_shift, emb_mode
        self.dev = model.device
        s = model.settings
        n_run = model.layers_for(s.emb_layer)
        self.enc: Encoder = model.encoder(n_run)
        self.budget = s.batch_tokens or default_batch_tokens(self.dev)
        self.has_cls = vocab.version == 2
        self.max_genes = model.max_input(vocab) - 2 * self.has_cls
        self.oom = OomSplitter(what="perturb")  # splits a batch that runs out of memory
        # batches mixing cells of different lengths run padded with a mask, or packed (the
        # rule embeddings use too); a batch of one cell's perturbations needs neither
        self.runner = Runner(
            self.enc,
            pad_id=model.config.pad_id,
            layout=choose_layout(s.layout, self.dev, s.precision),
            tail=model.tail(n_run),  # None without a classifier: no extra work
        )

    # -- building ---------------------------------------------------------------------------
    def specs(
        self,
        cells: TokenizedCells,
        idx: list[int],
        targets: torch.Tensor | None,
        anchor: int | None,
    ) -> list[tuple[int, Perturbations]]:
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
                spec = each_gene(
                    genes, self.kind, rank_shift=self.rank_shift, max_genes=self.max_genes
                )
            else:
                spec = gene_set(
                    genes, targets, self.kind, rank_shift=self.rank_shift, max_genes=self.max_genes
                )
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

    def _encode(self, blocks: list[torch.Tensor], rows: list[int]) -> Encoded:
        """Run blocks of equal-length rows (one cell's perturbations, or one original each)
        of the cells at input ``rows``."""
        return self.runner.encode(Tokens.from_blocks([self._wrap(b) for b in blocks], rows))

    def _cell_embs(self, enc: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean-pooled, state) cell embeddings; the state one is the CLS in the ``cls`` modes."""
        mean = enc.pool(self.has_cls, "mean")
        return mean, enc.pool(self.has_cls, "cls") if uses_cls(self.emb_mode) else mean

    def chunk_tokens(self, shard: Shard, chunks: list[tuple[int, int, int]]) -> int:
        """Padded tokens of a batch of (cell, row range) chunks (what the budget counts)."""
        width = max(shard.specs[c].tokens.shape[1] for c, _, _ in chunks) + 2 * self.has_cls
        return sum(b - a for _, a, b in chunks) * width

    # -- running ----------------------------------------------------------------------------
    def originals(self, cells: TokenizedCells, built: list[tuple[int, Perturbations]]) -> Shard:
        """Hidden states and cell embeddings of each cell's original, once per cell."""
        s = int(self.has_cls)
        seqs = []
        obs = cells.obs_index[[i for i, _ in built]]
        for i, spec in built:
            cell = torch.from_numpy(cells.cell(i).astype(np.int64)).to(self.dev)
            seqs.append(cell[s : s + spec.orig_len])
        lengths = np.array([len(q) for q in seqs]) + 2 * s
        hidden_of: list[torch.Tensor | None] = [None] * len(seqs)
        mean_emb = torch.empty(len(seqs), self.model.config.hidden, device=self.dev)
        cell_emb = torch.empty_like(mean_emb)
        clf = self.model.classifier
        probs = None if clf is None else mean_emb.new_empty(len(seqs), len(clf.classes))
        for batch in token_budget_batches(lengths, self.budget):
            for idx, enc in self.oom.run(
                lambda j: self._encode([seqs[x][None] for x in j], obs[j].tolist()),
                batch,
                lambda j: len(j) * int(lengths[j].max()),
            ):
                rows = torch.as_tensor(idx, device=self.dev)
                mean_emb[rows], cell_emb[rows] = self._cell_embs(enc)
                if probs is not None:
                    probs[rows] = enc.probs()
                for row, j in enumerate(idx):
                    hidden_of[j] = enc.row(row)
        hidden = torch.cat(hidden_of)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()
        return Shard(
            [i for i, _ in built],
            obs,
            [sp for _, sp in built],
            hidden,
            torch.linalg.vector_norm(hidden, dim=-1, dtype=torch.float32),
            starts,
            mean_emb,
            cell_emb,
            probs,
        )

    def run_batch(
        self, shard: Shard, chunks: list[tuple[int, int, int]], states: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Forward one token-budget batch of perturbation rows and compare with originals
        (every result recorded for the finiteness check, ``self.runner.finite``)."""
        rows = [int(shard.rows[c]) for c, _, _ in chunks]
        enc = self._encode([shard.specs[c].tokens[a:b] for c, a, b in chunks], rows)  # R rows
        cell_of_row = torch.cat([torch.full((b - a,), c, device=self.dev) for c, a, b in chunks])
        orig_cell = shard.orig_cell[cell_of_row]
        pert_mean, pert_cell = self._cell_embs(enc)
        orig_mean = shard.orig_mean[cell_of_row]
        out = {"cell_cos_sim": F.cosine_similarity(pert_mean, orig_mean, dim=-1)}
        if uses_cls(self.emb_mode):  # Geneformer's value in the cls modes: the <cls> cosine
            out["cos_sim"] = F.cosine_similarity(pert_cell, orig_cell, dim=-1)
        if self.emb_mode != "cls":  # the gene tokens' cosines (never <cls>/<eos>)
            gene_cos, valid = self._gene_cos(shard, chunks, enc)
            out.setdefault("cos_sim", gene_cos.sum(1) / valid.sum(1))
            if keeps_genes(self.emb_mode):
                out["gene_cos"] = gene_cos
        if states is not None:
            out["shifts"] = F.cosine_similarity(
                pert_cell[:, None], states[None], dim=-1
            ) - F.cosine_similarity(orig_cell[:, None], states[None], dim=-1)
        for name, values in out.items():
            self.runner.finite.add(name, values, enc.cells, enc.hidden.dtype)
        if enc.logits is not None:
            out["probs"] = enc.probs()  # recorded for the finiteness check by probs()
        return out

    def _gene_cos(
        self, shard: Shard, chunks: list[tuple[int, int, int]], enc: Encoded
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, k) cosine of each affected gene's original and perturbed hidden state (0 past a
        row's own k) and where it is valid: two gathers in the compute dtype, sums in fp32,
        the originals' norms computed once per shard."""
        s = int(self.has_cls)
        k = max(shard.specs[c].aff_orig.shape[1] for c, _, _ in chunks)

        def stacked(part: str, offset) -> torch.Tensor:
            return torch.cat(
                [
                    F.pad(
                        getattr(shard.specs[c], part)[a:b] + offset(c),
                        (0, k - shard.specs[c].aff_orig.shape[1]),
                        value=-1,
                    )
                    for c, a, b in chunks
                ]
            )

        aff_o = stacked("aff_orig", lambda c: shard.orig_start[c] + s)  # rows of orig_hidden
        aff_p = stacked("aff_pert", lambda c: s)  # positions in each perturbed row
        valid = aff_p >= s
        aff_o, aff_p = aff_o.clamp(min=0), aff_p.clamp(min=0)
        pert = enc.take(aff_p)  # (R, k, h)
        dot = (shard.orig_hidden[aff_o] * pert).sum(-1, dtype=torch.float32)
        norms = shard.orig_norm[aff_o] * torch.linalg.vector_norm(pert, dim=-1, dtype=torch.float32)
        return torch.where(valid, dot / norms.clamp(min=1e-8), 0.0), valid

    def row_chunks(self, shard: Shard) -> list[list[tuple[int, int, int]]]:
        """Group (cell, row range) chunks into batches of at most ``budget`` tokens.

        Padded, a batch holds rows of one length only (no padding, no mask: SDPA's fastest
        kernel); packed, rows of different lengths share a batch at no cost, so it is filled.
        """
        mix = self.runner.layout == Layout.PACKED
        batches, current, used, width = [], [], 0, 0
        for c, spec in enumerate(shard.specs):
            if current and not mix and spec.tokens.shape[1] + 2 * int(self.has_cls) != width:
                batches.append(current)
                current, used = [], 0
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
