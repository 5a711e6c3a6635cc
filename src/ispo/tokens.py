"""Geneformer rank-value encoding, vectorised over CSR chunks.

For each cell, gene values are ``count / n_counts * 10_000 / median[gene]``; non-zero genes are
sorted by value, highest first, and their tokens kept up to the model input size (V1: 2048; V2:
4094 between ``<cls>`` and ``<eos>``). Geneformer's sort is unstable; ispo breaks ties by token
id, so the same cell always gives the same tokens. The whole chunk is ranked with one sort of
64-bit keys — no Python loop per cell or gene.

Cells are stored ragged: one flat ``int32`` token array plus offsets, which is what batching wants.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ispo import faults
from ispo.errors import IspoError
from ispo.io.genes import GeneMap, build_gene_map
from ispo.io.read import iter_count_chunks, obs_column
from ispo.io.validate import check_counts
from ispo.io.vocab import Vocab, load_vocab

log = logging.getLogger(__name__)
TARGET_SUM = 10_000
NO_CELLS = (
    "no cell has counts in vocabulary genes (all empty or filtered out): check the "
    "counts matrix, the gene ids and obs['filter_pass']"
)
MAX_CHUNK = 4096  # cells per ranking chunk: the row index must fit 12 bits of the sort key


@dataclass
class TokenizedCells:
    """Ragged token lists of many cells.

    ``tokens[offsets[i]:offsets[i+1]]`` is cell ``i``; ``obs_index[i]`` is its row in the input
    AnnData. ``has_cls`` tells whether each list starts with ``<cls>`` and ends with ``<eos>``.
    """

    tokens: np.ndarray  # (total,) int32
    offsets: np.ndarray  # (n + 1,) int64
    obs_index: np.ndarray  # (n,) int64
    has_cls: bool

    def __len__(self) -> int:
        return len(self.obs_index)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def cell(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def to_lists(self) -> list[list[int]]:
        return [self.cell(i).tolist() for i in range(len(self))]

    def subset(self, idx: np.ndarray) -> TokenizedCells:
        """The cells at positions ``idx`` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        lens = self.lengths[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        starts = self.offsets[idx]
        gather = np.repeat(starts - offsets[:-1], lens) + np.arange(offsets[-1])
        return TokenizedCells(self.tokens[gather], offsets, self.obs_index[idx], self.has_cls)

    @staticmethod
    def concat(parts: list[TokenizedCells], has_cls: bool) -> TokenizedCells:
        if not parts:
            return TokenizedCells(
                np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.int64), has_cls
            )
        lens = np.concatenate([p.lengths for p in parts])
        offsets = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        return TokenizedCells(
            np.concatenate([p.tokens for p in parts]),
            offsets,
            np.concatenate([p.obs_index for p in parts]),
            has_cls,
        )


def _vocab_entries(counts: sp.csr_matrix, gmap: GeneMap) -> tuple[np.ndarray, ...]:
    """Non-zero (row, column, count) entries of the chunk over vocabulary columns.

    Without duplicate genes this is a lookup on the CSR entries; with duplicates one sparse
    product sums the counts that share a canonical gene.
    """
    if gmap.has_duplicates:
        counts = (counts @ gmap.merge).tocsr()
        cols = counts.indices
    else:
        cols = gmap.col_of_input[counts.indices]
    rows = np.repeat(np.arange(counts.shape[0], dtype=np.int32), np.diff(counts.indptr))
    keep = np.flatnonzero((cols >= 0) & (counts.data != 0))
    return rows[keep], cols[keep], counts.data[keep]


def _rank_order(
    rows: np.ndarray, pos: np.ndarray, values: np.ndarray, tokens: np.ndarray
) -> np.ndarray:
    """Order of entries by row, then value descending, then token id: exact, and fast.

    Entries come row by row (CSR order; ``pos`` is each one's position within its row). One
    ``np.sort`` (SIMD, no index array to carry) of a 64-bit key does the work: the row in the
    high bits, the top bits of the complemented (positive) float64 value in the middle, ``pos``
    in the low bits, from which the order is read back (rows keep their places, so entry i of
    the result belongs to row ``rows[i]`` too). Entries whose truncated values collide are
    re-sorted exactly among themselves by (value, token) — a tiny subset — so the result is
    exact and does not depend on the sort's stability.
    """
    n = len(rows)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    row_bits = max(1, int(rows[-1]).bit_length())
    pos_bits = max(1, int(pos.max()).bit_length())
    vbits = 64 - row_bits - pos_bits  # >= 37 for 4,096 cells of at most 32,768 genes
    assert vbits >= 24, "ranking chunks hold at most MAX_CHUNK cells"
    u = np.uint64
    top = values.view(u) >> u(63 - vbits)  # positive floats: the sign bit is 0
    key = (rows.astype(u) << u(vbits + pos_bits)) | ((u((1 << vbits) - 1) - top) << u(pos_bits))
    key |= pos.astype(u)
    key.sort()
    order = np.arange(n, dtype=np.int64) - pos + (key & u((1 << pos_bits) - 1)).astype(np.int64)
    ks = key >> u(pos_bits)  # (row, truncated value) in sorted order
    eq = ks[1:] == ks[:-1]
    if eq.any():
        tied = np.zeros(n, dtype=bool)
        tied[1:] |= eq
        tied[:-1] |= eq
        at = np.flatnonzero(tied)
        sub = order[at]
        order[at] = sub[np.lexsort((tokens[sub], -values[sub], ks[at]))]
    return order


def rank_value_encode(
    counts: sp.csr_matrix,
    n_counts: np.ndarray,
    gmap: GeneMap,
    max_genes: int,
    special: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and per-cell lengths of a chunk of cells (cells with no gene give length 0).

    ``special`` is ``(cls, eos)`` for V2 vocabularies, wrapped around each non-empty cell.
    """
    rows, cols, data = _vocab_entries(counts, gmap)
    values = data.astype(np.float64) / n_counts[rows] * TARGET_SUM / gmap.medians[cols]
    tokens = gmap.tokens[cols]
    nnz_per_row = np.bincount(rows, minlength=counts.shape[0])
    first = np.zeros(len(nnz_per_row), dtype=np.int64)
    np.cumsum(nnz_per_row[:-1], out=first[1:])
    pos = np.arange(len(rows), dtype=np.int64) - np.repeat(first, nnz_per_row)
    order = _rank_order(rows, pos, values, tokens)
    genes = tokens[order[pos < max_genes]]  # the order keeps rows in place: pos is the rank
    gene_lens = np.minimum(nnz_per_row, max_genes)
    if special is None:
        return genes.astype(np.int32), gene_lens
    lens = np.where(gene_lens > 0, gene_lens + 2, 0)
    out = np.empty(lens.sum(), dtype=np.int32)
    ends = np.cumsum(lens)
    starts = ends - lens
    nonempty = lens > 0
    out[starts[nonempty]] = special[0]
    out[ends[nonempty] - 1] = special[1]
    is_gene = np.ones(len(out), dtype=bool)
    is_gene[starts[nonempty]] = False
    is_gene[ends[nonempty] - 1] = False
    out[is_gene] = genes
    return out, lens


def _passes(flags: np.ndarray) -> np.ndarray:
    """``filter_pass`` as booleans, whether stored as 0/1, bools or strings ("0", "False")."""
    if flags.dtype.kind in "biuf":
        return flags.astype(bool)
    return (
        ~pd.Series(flags).astype(str).str.strip().str.lower().isin(["0", "false", "0.0"]).to_numpy()
    )


def iter_tokenize(
    adata: ad.AnnData,
    vocab: Vocab | str,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    max_input: int | None = None,
    chunk_size: int = 4096,
    warn_empty: bool = True,
) -> Iterator[TokenizedCells]:
    """Tokenize ``adata`` chunk by chunk (streaming; works on backed files).

    Cells with ``obs["filter_pass"] == 0`` are skipped; cells with no counted vocabulary gene are
    skipped with a warning (``warn_empty=False``: silently, for a second pass over the same
    data). ``n_counts`` comes from ``obs["n_counts"]`` or, when absent, from all
    genes of the raw counts (before any is dropped), as Geneformer does.
    """
    vocab = load_vocab(vocab)
    chunk_size = faults.chunk_cap(min(chunk_size, MAX_CHUNK))  # ISPO_FAULT: tiny chunks
    gmap = build_gene_map(adata.var, vocab, gene_key)
    max_input = max_input or vocab.max_input
    special = (vocab.cls_id, vocab.eos_id) if vocab.version == 2 else None
    max_genes = max_input - (2 if special else 0)
    n_counts_obs = obs_column(adata, "n_counts")
    filter_pass = obs_column(adata, "filter_pass")
    where = f"layers[{layer!r}]" if layer else "X"
    for start, chunk in iter_count_chunks(adata, layer=layer, chunk_size=chunk_size):
        check_counts(chunk, where)
        stop = start + chunk.shape[0]
        if n_counts_obs is not None:
            n_counts = n_counts_obs[start:stop].astype(np.float64)
        else:
            n_counts = np.asarray(chunk.sum(axis=1), dtype=np.float64).ravel()
        rows = np.arange(chunk.shape[0])
        if filter_pass is not None:
            passing = _passes(filter_pass[start:stop])
            if not passing.all():  # a CSR row selection copies the chunk: only when needed
                rows = rows[passing]
                chunk, n_counts = chunk[rows], n_counts[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            tokens, lens = rank_value_encode(chunk, n_counts, gmap, max_genes, special)
        empty = lens == 0
        if empty.any() and warn_empty:
            log.warning(
                "skipping %d cell(s) with no counted vocabulary gene (e.g. %s)",
                int(empty.sum()),
                adata.obs_names[start + rows[np.flatnonzero(empty)[0]]],
            )
        kept = ~empty
        offsets = np.zeros(int(kept.sum()) + 1, dtype=np.int64)
        np.cumsum(lens[kept], out=offsets[1:])
        yield TokenizedCells(tokens, offsets, (start + rows[kept]).astype(np.int64), bool(special))


def tokenize(
    adata: ad.AnnData,
    vocab: Vocab | str,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    max_input: int | None = None,
    chunk_size: int = 4096,
) -> TokenizedCells:
    """Rank-value tokens of every passing cell of ``adata`` (see :func:`iter_tokenize`)."""
    vocab = load_vocab(vocab)
    parts = list(
        iter_tokenize(
            adata, vocab, layer=layer, gene_key=gene_key, max_input=max_input, chunk_size=chunk_size
        )
    )
    cells = TokenizedCells.concat(parts, vocab.version == 2)
    if len(cells) == 0:
        raise IspoError(NO_CELLS)
    return cells
