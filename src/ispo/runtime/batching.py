"""Token-budget batching: cells sorted by length, packed so each batch holds ~the same work.

A fixed number of cells per batch wastes compute on padding (short cells padded to the longest)
and memory on long cells. Sorting by length and filling each batch up to ``batch_tokens``
(cells x longest length) keeps padding small and the device evenly loaded.
"""

from __future__ import annotations

import numpy as np
import torch

from ispo.tokens import TokenizedCells


def token_budget_batches(
    lengths: np.ndarray, batch_tokens: int, max_cells: int | None = None
) -> list[np.ndarray]:
    """Indices of each batch, longest cells first; a cell longer than the budget goes alone."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    i, n = 0, len(order)
    while i < n:
        longest = int(lengths[order[i]])
        size = max(1, batch_tokens // max(longest, 1))
        if max_cells is not None:
            size = min(size, max_cells)
        batches.append(order[i : i + size])
        i += size
    return batches


def bucket_batches(
    lengths: np.ndarray, batch_tokens: int, rng: np.random.Generator, jitter: float = 0.02
) -> list[np.ndarray]:
    """Training batches: cells of about the same length together, grouped and ordered anew by
    ``rng`` each epoch.

    Cells are sorted by their length times a random factor in ``1 +- jitter`` (so the buckets
    change from epoch to epoch while padding stays small), filled into batches up to
    ``batch_tokens`` (cells x the batch's longest real cell; a longer cell goes alone), and the
    batches come in random order. On 1,500 Kang cells at 8,192 tokens the padded batches hold
    2.5% more tokens than the cells (jitter 0.1: 9%; Geneformer's shuffled batches of 12: 72%).
    """
    lengths = np.asarray(lengths)
    if len(lengths) == 0:
        return []
    key = lengths * rng.uniform(1 - jitter, 1 + jitter, len(lengths))
    batches: list[np.ndarray] = []
    start, longest = 0, 0
    order = np.argsort(-key, kind="stable")
    for i, n in enumerate(lengths[order].tolist()):
        longest = max(longest, n)
        if i > start and (i - start + 1) * longest > batch_tokens:
            batches.append(order[start:i])
            start, longest = i, n
    batches.append(order[start:])
    return [batches[i] for i in rng.permutation(len(batches))]


def fixed_batches(n: int, batch_size: int) -> list[np.ndarray]:
    """Input-order batches of ``batch_size`` cells (the usual, reference way)."""
    return [np.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def pad_batch(
    cells: TokenizedCells, idx: np.ndarray, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ``(len(idx), longest)`` int64 ids and the lengths, built without a Python loop."""
    lens = cells.lengths[idx]
    width = int(lens.max())
    pos = np.arange(width)
    inside = pos[None, :] < lens[:, None]
    gather = np.minimum(cells.offsets[idx][:, None] + pos[None, :], len(cells.tokens) - 1)
    ids = np.where(inside, cells.tokens[gather], pad_id)
    return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(lens.astype(np.int64))
