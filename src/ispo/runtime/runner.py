"""The one encoder runner: embeddings and perturbations lay out, encode and pool through here.

A batch is a set of token rows (cells, or perturbed copies of a cell), given flat, row after
row (:class:`Tokens`). The runner lays it out by one rule (:func:`choose_layout`): padded to its
longest row (with a key mask only when the rows differ in length, so a batch of one cell's
perturbations, which all share a length, runs SDPA without a mask) or packed end to end (varlen
flash attention, no padding at all). What comes back (:class:`Encoded`) answers in either
layout what the callers need: pooled cell embeddings (mean or ``<cls>``), one row's hidden
states, and the hidden states at chosen (row, position) pairs (a gather, never a scatter back to
a padded batch). Pooling runs in the compute dtype with fp32 accumulation, so no fp32 copy of a
whole hidden batch is made. With a cell classifier's tail (:mod:`ispo.model.tail`) the same
call also gives each row's class logits, read from the last layer while the hidden states stay
those of the pooled layer: one encoder pass serves both. Every pooled batch and its class
probabilities are recorded in the runner's :class:`~ispo.runtime.finite.FiniteCheck` with the
input rows of its cells, so no NaN or Inf passes unseen (the callers check it where they read
results back).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ispo.model.encoder import Packed
from ispo.model.tail import ClassifierTail
from ispo.runtime.finite import FiniteCheck
from ispo.runtime.pool import pool, pool_packed
from ispo.runtime.profiler import synchronize
from ispo.settings import Layout, Pool, Precision
from ispo.tokens import TokenizedCells


def default_batch_tokens(device: torch.device) -> int:
    """A token budget that keeps the device busy without risking memory (measured: on a CPU,
    16k tokens keep a batch's activations in the last-level cache while the matmuls stay
    large; on a GPU, 128k fill the SMs)."""
    return 131_072 if device.type == "cuda" else 16_384


def choose_layout(layout: Layout | str, device: torch.device, precision: Precision | str) -> Layout:
    """The layout a run uses: ``padded`` or ``packed``, whatever asked for ``auto``.

    One rule for embeddings and perturbations: ``auto`` packs only where a varlen attention
    kernel exists, i.e. on CUDA in fp16/bf16 (flash attention over packed sequences). Elsewhere
    (CPU, or fp32 on CUDA) packing would pad again for the attention step of every layer, a
    scatter in and a gather out, while length-sorted token-budget batches leave little padding
    to save: packing only adds work there. An explicit ``padded``/``packed`` is kept.
    """
    layout = Layout.parse(layout, "layout")
    if layout != Layout.AUTO:
        return layout
    half = Precision.parse(precision, "precision") in (Precision.FP16, Precision.BF16)
    return Layout.PACKED if device.type == "cuda" and half else Layout.PADDED


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device copy; pinned and asynchronous on CUDA so it overlaps compute."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


@dataclass
class Tokens:
    """A batch of token rows, flat: row after row (the packed order), and the input row of the
    cell each row belongs to (what an error names)."""

    ids: torch.Tensor  # (T,) int64
    lengths: torch.Tensor  # (B,) int64
    width: int  # the longest row
    uniform: bool  # every row has length ``width``: no mask, no padding
    cells: np.ndarray  # (B,) input row of each row's cell

    @classmethod
    def from_blocks(cls, blocks: list[torch.Tensor], cells: list[int]) -> Tokens:
        """Rows from blocks of equal-length rows, (P_i, m_i) each (one cell's perturbations);
        ``cells``: the input row of each block's cell."""
        dev = blocks[0].device
        widths = [b.shape[1] for b in blocks]
        lengths = torch.cat(
            [torch.full((b.shape[0],), b.shape[1], dtype=torch.int64, device=dev) for b in blocks]
        )
        ids = torch.cat([b.reshape(-1) for b in blocks])
        rows = np.repeat(np.asarray(cells, dtype=np.int64), [b.shape[0] for b in blocks])
        return cls(ids, lengths, max(widths), min(widths) == max(widths), rows)

    @classmethod
    def from_cells(cls, cells: TokenizedCells, idx: np.ndarray, device: torch.device) -> Tokens:
        """Rows of the cells ``idx`` (gathered on the host without a Python loop)."""
        sub = cells.subset(idx)
        lens = sub.lengths.astype(np.int64)
        ids = to_device(torch.from_numpy(sub.tokens.astype(np.int64)), device)
        return cls(
            ids,
            to_device(torch.from_numpy(lens), device),
            int(lens.max()),
            lens.min() == lens.max(),
            sub.obs_index,
        )

    def padded(self, pad_id: int) -> torch.Tensor:
        """(B, width) ids, ``pad_id`` past each row's length (a view when uniform)."""
        if self.uniform:
            return self.ids.view(len(self.lengths), self.width)
        keep = torch.arange(self.width, device=self.ids.device)[None] < self.lengths[:, None]
        out = self.ids.new_full((len(self.lengths), self.width), pad_id)
        out[keep] = self.ids
        return out


@dataclass
class Encoded:
    """Hidden states of one batch, padded (B, L, h) or packed (T, h), and where rows start;
    ``cells`` and ``finite``: the input rows of its cells, and where pooled results are
    recorded for the NaN/Inf check."""

    hidden: torch.Tensor
    lengths: torch.Tensor  # (B,)
    starts: torch.Tensor  # (B,) flat index of each row's first token in ``flat()``
    packed: Packed | None
    cells: np.ndarray  # (B,) input row of each row's cell
    finite: FiniteCheck
    logits: torch.Tensor | None = None  # (B, classes) fp32, when the runner has a classifier

    def flat(self) -> torch.Tensor:
        """(N, h): every token's hidden state (padding included when padded)."""
        return self.hidden.reshape(-1, self.hidden.shape[-1])

    def row(self, i: int) -> torch.Tensor:
        """(length_i, h) hidden states of row ``i``."""
        if self.packed is None:
            return self.hidden[i, : int(self.lengths[i])]
        a = int(self.starts[i])
        return self.hidden[a : a + int(self.lengths[i])]

    def take(self, pos: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B', k, h) hidden states at positions ``pos`` (B', k) of rows ``rows`` (all rows in
        order when None): one gather from either layout, in the compute dtype."""
        starts = self.starts if rows is None else self.starts[rows]
        return self.flat()[starts[:, None] + pos]

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, h) hidden states and the (B, L) mask of their real tokens; a packed batch is
        gathered into rows (no host sync either way)."""
        width = self.hidden.shape[1] if self.packed is None else self.packed.max_len
        pos = torch.arange(width, device=self.hidden.device)
        keep = pos[None] < self.lengths[:, None]
        if self.packed is None:
            return self.hidden, keep
        idx = (self.starts[:, None] + pos).clamp(max=len(self.hidden) - 1)
        return self.hidden[idx], keep

    def probs(self) -> torch.Tensor:
        """(B, classes) fp32 class probabilities (softmax of the classifier's logits), recorded
        for the finiteness check."""
        if self.logits is None:
            raise ValueError("this batch ran without a classifier")
        probs = torch.softmax(self.logits, dim=-1)
        self.finite.add("probabilities", probs, self.cells, self.hidden.dtype)
        return probs

    def pool(self, has_cls: bool, mode: Pool | str = "mean") -> torch.Tensor:
        """(B, h) float32 cell embeddings: mean over gene tokens, or the ``<cls>`` token
        (recorded for the finiteness check: a NaN or Inf in any gene token's hidden state
        makes the mean non-finite too)."""
        if self.packed is not None:
            out = pool_packed(self.hidden, self.packed, has_cls, mode)
        else:
            out = pool(self.hidden, self.lengths, has_cls, mode)
        self.finite.add("embeddings", out, self.cells, self.hidden.dtype)
        return out


@dataclass
class EncoderTime:
    """Wall time spent inside the encoder, and how many batches it ran."""

    seconds: float = 0.0
    batches: int = 0


_CLOCK: ContextVar[EncoderTime | None] = ContextVar("ispo_encoder_clock", default=None)


@contextmanager
def encoder_clock() -> Iterator[EncoderTime]:
    """Time every encoder call of the runners used inside the block (what a benchmark needs to
    report the time spent outside the encoder). On CUDA each timed call is synchronised, which
    stops host work from overlapping the device: for measurement only."""
    clock = EncoderTime()
    token = _CLOCK.set(clock)
    try:
        yield clock
    finally:
        _CLOCK.reset(token)


class Runner:
    """Runs one encoder on token batches in the layout :func:`choose_layout` picked.

    ``encoder`` is whatever module the model built for the run (plain, compiled, int8): it takes
    padded ids (B, L) with the row lengths (None when there is no padding), or flat ids with a
    :class:`Packed`. ``tail`` (a cell classifier's, or None) turns the hidden states into
    each row's class logits (:attr:`Encoded.logits`) in the same call. ``finite`` collects the
    pooled results and probabilities of every batch; the caller calls its ``check()`` where it
    reads results back.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        pad_id: int,
        layout: Layout,
        tail: ClassifierTail | None = None,
    ) -> None:
        if layout == Layout.AUTO:
            raise ValueError("resolve the layout with choose_layout first")
        self.encoder, self.pad_id, self.layout, self.tail = encoder, pad_id, layout, tail
        self.finite = FiniteCheck()

    def encode(self, tokens: Tokens) -> Encoded:
        """Hidden states of a batch (timed under :func:`encoder_clock`)."""
        clock = _CLOCK.get()
        if clock is None:
            return self._encode(tokens)
        synchronize(tokens.ids.device)
        t = time.perf_counter()
        out = self._encode(tokens)
        synchronize(tokens.ids.device)
        clock.seconds += time.perf_counter() - t
        clock.batches += 1
        return out

    def _encode(self, tokens: Tokens) -> Encoded:
        """Uniform batches (no padding) always run padded: that is the packed layout too, and
        it needs no mask."""
        enc = self._hidden(tokens)
        if self.tail is not None:
            enc.logits = self.tail(*enc.padded())
        return enc

    def _hidden(self, tokens: Tokens) -> Encoded:
        B = len(tokens.lengths)
        if self.layout == Layout.PACKED and not tokens.uniform:
            ctx = Packed.from_lengths(tokens.lengths)
            hidden = self.encoder(tokens.ids, ctx)
            starts = ctx.cu_seqlens[:-1].long()
            return Encoded(hidden, tokens.lengths, starts, ctx, tokens.cells, self.finite)
        ids = tokens.padded(self.pad_id)
        hidden = self.encoder(ids, None if tokens.uniform else tokens.lengths)
        starts = torch.arange(B, device=ids.device) * tokens.width
        return Encoded(hidden, tokens.lengths, starts, None, tokens.cells, self.finite)
