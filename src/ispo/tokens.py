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
from functools import cached_property

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ispo import faults
from ispo.errors import IspoError
from ispo.io.genes import GeneMap, build_gene_map
from ispo.io.read import Source, iter_count_chunks, obs_column, open_input
from ispo.io.select import passes
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

    @cached_property
    def lengths(self) -> np.ndarray:
        """Tokens per cell (computed once: batching asks for them per batch)."""
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
    """Per-row counts and the (column, count) of each non-zero entry over vocabulary columns,
    row by row.

    Without duplicate genes this is a lookup on the CSR entries; with duplicates one sparse
    product sums the counts that share a canonical gene.
    """
    if gmap.has_duplicates:
        counts = (counts @ gmap.merge).tocsr()
        cols = counts.indices
    else:
        cols = gmap.col_of_input[counts.indices]
    keep = (cols >= 0) & (counts.data != 0)
    if keep.all():
        return np.diff(counts.indptr), cols, counts.data
    kept = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(keep, out=kept[1:])
    return np.diff(kept[counts.indptr]), cols[keep], counts.data[keep]


# Widths of the row blocks the ranking sorts: rows of up to 512 entries sort inside SIMD
# registers, longer ones in blocks that waste at most a third of their width on padding.
WIDTHS = np.array(sorted({2**k for k in range(5, 17)} | {3 * 2**k for k in range(7, 16)}))
U64 = np.uint64


def _slots(nnz: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Where each row's block slot starts in one buffer, and the (start, rows, width) of each
    block: rows are grouped by the padded width they need, each group one contiguous block."""
    bucket = np.searchsorted(WIDTHS, nnz)
    by_bucket = np.argsort(bucket, kind="stable")
    counts = np.bincount(bucket, minlength=len(WIDTHS))
    sizes = counts * WIDTHS
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank_in_bucket = np.empty(len(nnz), dtype=np.int64)
    rank_in_bucket[by_bucket] = np.arange(len(nnz)) - np.repeat(_firsts(counts), counts)
    slot = starts[bucket] + rank_in_bucket * WIDTHS[bucket]
    blocks = [(int(starts[b]), int(counts[b]), int(WIDTHS[b])) for b in np.flatnonzero(counts)]
    return slot, blocks


def _firsts(counts: np.ndarray) -> np.ndarray:
    first = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    return first


def _value_bits(values: np.ndarray, vbits: int) -> np.ndarray:
    """The top ``vbits`` bits of each (positive) float64 value, complemented (highest value
    first), as uint32: its exponent relative to the chunk's smallest, then the mantissa.

    Truncation is monotone, so distinct keys are in the right order; equal keys (collisions)
    are resolved exactly by the caller.
    """
    bits = values.view(U64)  # positive floats: the sign bit is 0, the bits order like values
    lo, hi = int(bits.min()) >> 52, int(bits.max()) >> 52  # exponent range of the chunk
    bits = bits - U64(lo << 52)
    shift = max(0, (hi - lo).bit_length() + 52 - vbits)
    top = (bits >> U64(shift)).astype(np.uint32)
    return np.subtract(np.uint32((1 << vbits) - 1), top, out=top)


def _rank_order(nnz: np.ndarray, values: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Order of entries (row by row, ``nnz`` per row) by row, then value descending, then
    token id: exact, and fast.

    Rows are not sorted as one long array but in blocks of rows padded to one width
    (``np.sort(axis=1)``) of 32-bit keys, many times faster: rows of up to 512 entries sort
    within SIMD registers, and the key holds no row bits. A key is the complemented top bits of
    the value above the entry's position in its row, from which the order is read back (rows
    keep their places). Entries whose truncated values collide are re-sorted exactly among
    themselves by (value, token) (a small subset), so the result is exact and does not depend
    on the sort's stability.
    """
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pos_bits = int(nnz.max()).bit_length()  # positions < 2**pos_bits - 1: keys < padding
    row_first = np.repeat(_firsts(nnz), nnz)
    pos = np.arange(n, dtype=np.int64)
    pos -= row_first
    slot, blocks = _slots(nnz)
    dest = np.repeat(slot, nnz)
    dest += pos
    key = _value_bits(values, 32 - pos_bits)
    key <<= np.uint32(pos_bits)
    key |= pos.astype(np.uint32)
    start, rows, width = blocks[-1]
    buf = np.full(start + rows * width, np.iinfo(np.uint32).max, dtype=np.uint32)
    buf[dest] = key
    for start, rows, width in blocks:
        buf[start : start + rows * width].reshape(rows, width).sort(axis=1)
    ranked = buf.take(dest, out=key)  # the key array is free again: reuse its memory
    order = row_first
    order += ranked & np.uint32((1 << pos_bits) - 1)
    ranked >>= np.uint32(pos_bits)  # truncated values, in ranked order
    eq = ranked[1:] == ranked[:-1]
    eq &= pos[1:] > 0
    if eq.any():
        tied = np.zeros(n, dtype=bool)
        tied[1:] |= eq
        tied[:-1] |= eq
        at = np.flatnonzero(tied)
        sub = order[at]
        row = at - pos[at]  # the row's first entry: a row key
        order[at] = sub[np.lexsort((tokens[sub], -values[sub], row))]
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
    nnz, cols, data = _vocab_entries(counts, gmap)
    values = data.astype(np.float64)  # count / n_counts * 10_000 / median, in that order
    values /= np.repeat(np.asarray(n_counts, dtype=np.float64), nnz)
    values *= TARGET_SUM
    values /= gmap.medians[cols]
    tokens = gmap.tokens[cols]
    order = _rank_order(nnz, values, tokens)
    gene_lens = np.minimum(nnz, max_genes)
    if len(nnz) and nnz.max() > max_genes:  # the order keeps rows in place: pos is the rank
        pos = np.arange(len(order)) - np.repeat(np.cumsum(nnz) - nnz, nnz)
        order = order[pos < max_genes]
    genes = tokens[order]
    if special is None:
        return genes, gene_lens
    return _wrap(genes, gene_lens, special), np.where(gene_lens > 0, gene_lens + 2, 0)


def _wrap(genes: np.ndarray, gene_lens: np.ndarray, special: tuple[int, int]) -> np.ndarray:
    """``<cls> genes <eos>`` for every non-empty cell (V2)."""
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
    return out


@dataclass(frozen=True)
class Tokenizer:
    """What ranking needs that does not depend on the cells, built once per input.

    Picklable (arrays and ints), so worker processes get one and tokenize any rows of the same
    input (:mod:`ispo.embedding.feed`).
    """

    gmap: GeneMap
    max_genes: int
    special: tuple[int, int] | None  # (cls, eos) of V2 vocabularies
    layer: str | None

    @classmethod
    def build(
        cls,
        var: pd.DataFrame,
        vocab: Vocab | str,
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        max_input: int | None = None,
    ) -> Tokenizer:
        vocab = load_vocab(vocab)
        gmap = build_gene_map(var, vocab, gene_key)  # no gene ids / none known: fails here
        special = (vocab.cls_id, vocab.eos_id) if vocab.version == 2 else None
        max_input = max_input or vocab.max_input
        return cls(gmap, max_input - (2 if special else 0), special, layer)

    def rows(
        self,
        src: Source,
        start: int = 0,
        stop: int | None = None,
        *,
        chunk_size: int = MAX_CHUNK,
        warn_empty: bool = True,
    ) -> Iterator[TokenizedCells]:
        """Tokens of input rows ``[start, stop)``, ``chunk_size`` rows read and ranked at a time.

        ``obs_index`` counts rows of the whole input. Cells with ``obs["filter_pass"] == 0`` are
        skipped; cells with no counted vocabulary gene are skipped with a warning
        (``warn_empty=False``: silently, for a second pass over the same data).
        """
        stop = src.n_obs if stop is None else stop
        matrix = src.matrix(self.layer)
        n_counts_obs = obs_column(src.obs, "n_counts")
        filter_pass = obs_column(src.obs, "filter_pass")
        where = f"layers[{self.layer!r}]" if self.layer else "X"
        for a, chunk in iter_count_chunks(
            matrix, start, stop, faults.chunk_cap(min(chunk_size, MAX_CHUNK))
        ):
            check_counts(chunk, where)
            b = a + chunk.shape[0]
            if n_counts_obs is not None:
                n_counts = n_counts_obs[a:b].astype(np.float64)
            else:
                n_counts = np.asarray(chunk.sum(axis=1), dtype=np.float64).ravel()
            rows = np.arange(chunk.shape[0])
            if filter_pass is not None:
                passing = passes(filter_pass[a:b])
                if not passing.all():  # a CSR row selection copies the chunk: only when needed
                    rows = rows[passing]
                    chunk, n_counts = chunk[rows], n_counts[rows]
            with np.errstate(divide="ignore", invalid="ignore"):
                tokens, lens = rank_value_encode(
                    chunk, n_counts, self.gmap, self.max_genes, self.special
                )
            empty = lens == 0
            if empty.any() and warn_empty:
                log.warning(
                    "skipping %d cell(s) with no counted vocabulary gene (e.g. %s)",
                    int(empty.sum()),
                    src.obs_names[a + rows[np.flatnonzero(empty)[0]]],
                )
            offsets = np.zeros(int((~empty).sum()) + 1, dtype=np.int64)
            np.cumsum(lens[~empty], out=offsets[1:])
            obs_index = (a + rows[~empty]).astype(np.int64)
            yield TokenizedCells(tokens, offsets, obs_index, self.special is not None)


@dataclass(frozen=True)
class GivenTokens:
    """Cells that come tokenized (a dataset from Geneformer's ``TranscriptomeTokenizer``):
    their tokens are used as given, never re-ranked, after checks against the run's vocabulary
    and model (one line per problem). Reads rows like :class:`Tokenizer`, and is as picklable.
    """

    special: tuple[int, int] | None  # (cls, eos) of V2 vocabularies
    vocab_size: int
    max_input: int

    @classmethod
    def build(cls, vocab: Vocab, max_input: int | None = None) -> GivenTokens:
        special = (vocab.cls_id, vocab.eos_id) if vocab.version == 2 else None
        return cls(special, vocab.size, max_input or vocab.max_input)

    def rows(
        self,
        src: Source,
        start: int = 0,
        stop: int | None = None,
        *,
        chunk_size: int = MAX_CHUNK,
        warn_empty: bool = True,
    ) -> Iterator[TokenizedCells]:
        """Tokens of rows ``[start, stop)``, ``chunk_size`` rows at a time (empty cells
        skipped, with a warning unless ``warn_empty=False``)."""
        stop = src.n_obs if stop is None else stop
        for a in range(start, stop, chunk_size):
            tokens, lens = src.token_rows(a, min(a + chunk_size, stop))
            self._check(tokens, lens, a, src.name)
            empty = lens == 0
            if empty.any() and warn_empty:
                log.warning("skipping %d cell(s) with no token", int(empty.sum()))
            offsets = np.zeros(int((~empty).sum()) + 1, dtype=np.int64)
            np.cumsum(lens[~empty], out=offsets[1:])
            obs_index = (a + np.flatnonzero(~empty)).astype(np.int64)
            yield TokenizedCells(tokens, offsets, obs_index, self.special is not None)

    def _check(self, tokens: np.ndarray, lens: np.ndarray, first: int, name: str) -> None:
        if len(tokens) and (tokens.min() < 1 or tokens.max() >= self.vocab_size):
            bad = int(tokens[(tokens < 1) | (tokens >= self.vocab_size)][0])
            raise IspoError(
                f"{name} holds token {bad}, not a gene of the vocabulary ({self.vocab_size:,} "
                "tokens; 0 is padding): tokenize with the dictionaries of this model"
            )
        if len(lens) and lens.max() > self.max_input:
            i = first + int(np.argmax(lens))
            raise IspoError(
                f"cell {i} of {name} has {int(lens.max()):,} tokens but the model takes "
                f"{self.max_input:,}: tokenize with model_input_size={self.max_input}"
            )
        ends = np.cumsum(lens)[lens > 0]
        if not len(ends):
            return
        heads, tails = tokens[ends - lens[lens > 0]], tokens[ends - 1]
        if self.special is not None and not (
            (heads == self.special[0]).all() and (tails == self.special[1]).all()
        ):
            raise IspoError(
                f"cells of {name} do not all start with <cls> and end with <eos> (tokenized "
                "for a V1 model?): use the V1 dictionaries and model, or tokenize for V2"
            )
        if self.special is None and (heads == 2).all() and (tails == 3).all():
            raise IspoError(
                f"every cell of {name} starts with token 2 and ends with 3 (<cls> ... <eos>: "
                "tokenized for a V2 model?): use the V2 dictionaries and model"
            )


def cell_reader(
    src: Source,
    vocab: Vocab | str,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    max_input: int | None = None,
) -> Tokenizer | GivenTokens:
    """How the cells of ``src`` become tokens: ranked from counts (:class:`Tokenizer`), or read
    as given from a tokenized dataset (:class:`GivenTokens`); every check that can fail before
    any row is read is done here."""
    vocab = load_vocab(vocab)
    if src.tokenized:
        if layer is not None or gene_key is not None:
            raise IspoError(
                f"--layer and --gene-key apply to count inputs: {src.name} is already tokenized"
            )
        return GivenTokens.build(vocab, max_input)
    tok = Tokenizer.build(src.var, vocab, layer=layer, gene_key=gene_key, max_input=max_input)
    src.matrix(layer)  # no X / no such layer: fail now
    return tok


def iter_tokenize(
    adata: ad.AnnData | Source,
    vocab: Vocab | str,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    max_input: int | None = None,
    chunk_size: int = 4096,
    warn_empty: bool = True,
) -> Iterator[TokenizedCells]:
    """Tokenize ``adata`` (an AnnData, backed or not, or a :class:`~ispo.io.read.Source`)
    chunk by chunk, streaming; see :meth:`Tokenizer.rows` (a tokenized dataset's tokens are
    read as given: :class:`GivenTokens`).

    ``n_counts`` comes from ``obs["n_counts"]`` or, when absent, from all genes of the raw
    counts (before any is dropped), as Geneformer does.
    """
    src = open_input(adata)
    tok = cell_reader(src, vocab, layer=layer, gene_key=gene_key, max_input=max_input)
    yield from tok.rows(src, chunk_size=chunk_size, warn_empty=warn_empty)


def tokenize(
    adata: ad.AnnData | Source,
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
