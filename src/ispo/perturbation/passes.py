"""Streaming passes over the input, so host memory does not grow with the number of cells.

``ispo perturb`` tokenizes its input twice, the least that bounded memory allows:

1. **the scan** (:func:`scan_input`) keeps ~16 bytes per cell, no tokens: which rows tokenized
   (selection works on them), a digest of every token (the resume fingerprint) and whether each
   cell expresses the genes to check. The target states' cells are embedded *in the same pass*
   (:class:`StateSums`), as each chunk is tokenized: a state's mean embedding needs every cell
   of the state, not the selection, so it needs no pass of its own (it used to have one).
2. **the shards** (:func:`iter_shards`): each shard's cells are tokenized again as the pass
   reaches them, and the pass stops after the last shard this process runs. Keeping the
   selected cells' tokens from the scan instead would hold all of them at once (the selection
   is only known once the scan ends: ``cell_range`` and ``max_ncells`` count selected cells),
   which is what streaming is for not doing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import anndata as ad
import numpy as np
import torch

from ispo.embedding.embed import embed_cells
from ispo.errors import IspoError
from ispo.io.select import filter_mask, sample
from ispo.io.vocab import Vocab
from ispo.model.load import GeneformerModel
from ispo.perturbation.options import CellStates
from ispo.tokens import TokenizedCells


def select_cells(
    adata: ad.AnnData,
    obs_index: np.ndarray,
    cell_filter: dict | None,
    states: CellStates | None,
    max_ncells: int | None,
    cell_range: tuple[int, int] | None,
) -> np.ndarray:
    """Positions (among the tokenized cells, rows ``obs_index``) of the cells to perturb."""
    obs = adata.obs.iloc[obs_index]
    keep = filter_mask(obs, cell_filter)
    if states is not None:
        if states.state_key not in obs.columns:
            raise IspoError(
                f"state_key {states.state_key!r} is not an obs column: choose one "
                f"of {list(obs.columns)[:10]}"
            )
        keep &= (obs[states.state_key].astype(str) == states.start_state).to_numpy()
    sel = np.flatnonzero(keep)
    if cell_range is not None:
        sel = sel[cell_range[0] : cell_range[1]]
    sel = sample(sel, max_ncells)  # Geneformer's seeded draw
    if len(sel) == 0:
        what = f"start state {states.start_state!r}" if states else "the filters"
        raise IspoError(
            f"no cell left to perturb after {what}: check the filters, the state "
            "labels and the cell range"
        )
    return sel


class StateSums:
    """Mean cell embedding of each target state (same layer, pooling and settings as the run:
    ``model.settings``), summed chunk by chunk during the scan (no state's cells are held at
    once)."""

    def __init__(self, adata: ad.AnnData, model: GeneformerModel, states: CellStates):
        if states.state_key not in adata.obs.columns:
            raise IspoError(
                f"state_key {states.state_key!r} is not an obs column: choose one of "
                f"{list(adata.obs.columns)[:10]}"
            )
        s = model.settings
        self.model, self.states = model, states
        self.kw = dict(emb_layer=s.emb_layer, pool_mode=s.pool, batch_tokens=s.batch_tokens)
        self.labels = adata.obs[states.state_key].astype(str).to_numpy()
        self.sums = np.zeros((len(states.targets), model.config.hidden))
        self.counts = np.zeros(len(states.targets))

    def __call__(self, part: TokenizedCells) -> None:
        labels = self.labels[part.obs_index]
        for j, st in enumerate(self.states.targets):
            idx = np.flatnonzero(labels == st)
            if len(idx):
                emb = embed_cells(part.subset(idx), self.model, **self.kw)
                self.sums[j] += emb.sum(0, dtype=np.float64)
                self.counts[j] += len(idx)

    def means(self, obs_index: np.ndarray) -> torch.Tensor:
        """The states' means, once every state named is known among the tokenized cells."""
        known = sorted(set(self.labels[obs_index]))
        for st in (self.states.start_state, *self.states.targets):
            if st not in known:
                raise IspoError(
                    f"state {st!r} not found in obs[{self.states.state_key!r}]: known states "
                    f"are {known[:10]}"
                )
        means = (self.sums / self.counts[:, None]).astype(np.float32)
        return torch.from_numpy(means).to(self.model.device)


@dataclass
class InputScan:
    """What one streaming pass over the input keeps: no tokens, only what selection, the
    expression check and the resume fingerprint need (~16 bytes per cell)."""

    obs_index: np.ndarray  # input row of each tokenized cell
    digest: str  # sha1 of every cell's tokens, in order (the data in the fingerprint)
    present: np.ndarray  # (n_cells, n_wanted): the cell expresses wanted token j


def scan_input(
    chunks: Iterator[TokenizedCells],
    wanted: list[int],
    also: Callable[[TokenizedCells], None] | None = None,
) -> InputScan:
    """The scan pass; ``also(chunk)`` runs on each chunk too (:class:`StateSums`)."""
    sha = hashlib.sha1()
    obs, present = [], []
    for part in chunks:
        if also is not None:
            also(part)
        sha.update(part.tokens.tobytes())
        obs.append(part.obs_index)
        hit = np.zeros((len(part), len(wanted)), dtype=bool)
        if wanted:  # genes=all and overexpress lists need no check: skip the per-token pass
            cell_of = np.repeat(np.arange(len(part)), part.lengths)
            for j, tok in enumerate(wanted):
                hit[cell_of[part.tokens == tok], j] = True
        present.append(hit)
    return InputScan(
        np.concatenate(obs) if obs else np.zeros(0, np.int64),
        sha.hexdigest(),
        np.concatenate(present) if present else np.zeros((0, len(wanted)), bool),
    )


def iter_shards(
    chunks: Iterator[TokenizedCells], shards: list[np.ndarray], wanted: set[int]
) -> Iterator[tuple[int, TokenizedCells]]:
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


def check_expressed(scan: InputScan, sel: np.ndarray, wanted: list[int], vocab: Vocab) -> None:
    """A gene that no selected cell expresses cannot be deleted/moved: say so before running."""
    id_of = vocab.id_of_token()
    for j, tok in enumerate(wanted):
        if not scan.present[sel, j].any():
            gid = id_of[tok]
            raise IspoError(
                f"gene {vocab.symbol(gid)} ({gid}) is not expressed in any selected "
                "cell: choose another gene or other cells"
            )
