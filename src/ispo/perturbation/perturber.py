"""The perturber: each shard's perturbed sequences built on the device by index arithmetic
(:mod:`ispo.perturbation.index`), each cell's original run once, perturbed rows of many cells in
token-budget batches, and pooling, cosines and state shifts as batched tensor ops."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ispo.embedding.embed import Layout, default_batch_tokens
from ispo.io.vocab import Vocab
from ispo.model.encoder import Encoder, Packed
from ispo.model.load import GeneformerModel, Precision
from ispo.perturbation.index import Perturbations, PerturbType, each_gene, gene_set, with_anchor
from ispo.perturbation.options import EmbMode
from ispo.runtime.batching import token_budget_batches
from ispo.runtime.oom import OomSplitter
from ispo.runtime.pool import gene_mask
from ispo.tokens import TokenizedCells


@dataclass
class Shard:
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

    def __init__(
        self,
        model: GeneformerModel,
        vocab: Vocab,
        *,
        perturb_type: PerturbType,
        rank_shift: int,
        emb_mode: EmbMode,
        emb_layer: int,
        precision: Precision,
        batch_tokens: int | None,
        layout: Layout = "auto",
    ) -> None:
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

    def _cell_embs(
        self, hidden: torch.Tensor, lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean-pooled, state) cell embeddings; the state one is the CLS in ``cls`` mode."""
        m = gene_mask(lens, hidden.shape[1], self.has_cls).float()
        mean = torch.bmm(m[:, None], hidden.float()).squeeze(1) / m.sum(1, keepdim=True)
        return mean, hidden[:, 0].float() if self.emb_mode == "cls" else mean

    def _padded(
        self, rows: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Stack rows of token blocks into one padded batch; mask only if lengths differ."""
        width = max(r.shape[1] for r in rows)
        lens = torch.cat([torch.full((r.shape[0],), r.shape[1], device=self.dev) for r in rows])
        ids = torch.cat([F.pad(r, (0, width - r.shape[1]), value=self.pad) for r in rows])
        uniform = all(r.shape[1] == width for r in rows)
        return ids, None if uniform else lens, lens

    def _encode(
        self, ids: torch.Tensor, mask_lens: torch.Tensor | None, lens: torch.Tensor
    ) -> torch.Tensor:
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

    def chunk_tokens(self, shard: Shard, chunks: list[tuple[int, int, int]]) -> int:
        """Padded tokens of a batch of (cell, row range) chunks (what the budget counts)."""
        width = max(shard.specs[c].tokens.shape[1] for c, _, _ in chunks) + 2 * self.has_cls
        return sum(b - a for _, a, b in chunks) * width

    # -- running ----------------------------------------------------------------------------
    def originals(self, cells: TokenizedCells, built: list[tuple[int, Perturbations]]) -> Shard:
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
                lambda j: self._forward([seqs[x][None] for x in j]),
                batch,
                lambda j: len(j) * int(lengths[j].max()),
            ):
                rows = torch.as_tensor(idx, device=self.dev)
                mean_emb[rows], cell_emb[rows] = self._cell_embs(hidden, lens)
                for row, j in enumerate(idx):
                    hidden_of[j] = hidden[row, : lengths[j]]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()
        return Shard(
            [i for i, _ in built],
            [sp for _, sp in built],
            torch.cat(hidden_of),
            starts,
            mean_emb,
            cell_emb,
        )

    def run_batch(
        self, shard: Shard, chunks: list[tuple[int, int, int]], states: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Forward one token-budget batch of perturbation rows and compare with originals."""
        s = int(self.has_cls)
        ids, mask_lens, lens = self._padded(
            [self._wrap(shard.specs[c].tokens[a:b]) for c, a, b in chunks]
        )
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
            aff_o = torch.cat(
                [
                    F.pad(
                        shard.specs[c].aff_orig[a:b] + shard.orig_start[c] + s,
                        (0, k - shard.specs[c].aff_orig.shape[1]),
                    )
                    for c, a, b in chunks
                ]
            )
            aff_p = torch.cat(
                [
                    F.pad(
                        shard.specs[c].aff_pert[a:b] + s, (0, k - shard.specs[c].aff_pert.shape[1])
                    )
                    for c, a, b in chunks
                ]
            )
            kmask = torch.cat(
                [
                    F.pad(
                        torch.ones(b - a, shard.specs[c].aff_orig.shape[1], device=self.dev),
                        (0, k - shard.specs[c].aff_orig.shape[1]),
                    )
                    for c, a, b in chunks
                ]
            )
            orig = shard.orig_hidden[aff_o]  # (R, k, h)
            pert = hidden.gather(1, aff_p[..., None].expand(-1, -1, hidden.shape[2]))
            gene_cos = F.cosine_similarity(orig.float(), pert.float(), dim=-1) * kmask
            out["cos_sim"] = gene_cos.sum(1) / kmask.sum(1)
            if self.emb_mode == "cell_and_gene":
                out["gene_cos"] = gene_cos
        if states is not None:
            out["shifts"] = F.cosine_similarity(
                pert_cell[:, None], states[None], dim=-1
            ) - F.cosine_similarity(orig_cell[:, None], states[None], dim=-1)
        return out

    def row_chunks(self, shard: Shard) -> list[list[tuple[int, int, int]]]:
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
