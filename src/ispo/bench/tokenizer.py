"""The benchmark's ``tokenize`` row: rank-value encoding timed on its own (one core, numpy)."""

from __future__ import annotations

import time
from typing import Any

import anndata as ad
import numpy as np

from ispo.bench.rows import MIB, blank_row
from ispo.io.vocab import Vocab
from ispo.runtime.profiler import Profiler
from ispo.tokens import TokenizedCells, tokenize


def time_tokenizer(
    adata: ad.AnnData, vocab: Vocab, max_input: int, repeats: int, **kw: Any
) -> tuple[dict[str, Any], TokenizedCells]:
    """A ``tokenize`` row: median seconds over ``repeats`` runs (one core, numpy)."""
    times, cells = [], None
    with Profiler(device="cpu") as prof:
        cells = tokenize(adata, vocab, max_input=max_input, **kw)  # warm-up
        prof.mark_steady()
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            cells = tokenize(adata, vocab, max_input=max_input, **kw)
            times.append(time.perf_counter() - t0)
    t = float(np.median(times))
    s = prof.stats
    row = blank_row(
        method="tokenize",
        label=f"Tokenize ({len(cells):,} cells)",
        family="tokenize",
        status="ok",
        path="tokenize",
        backend="ispo.tokenize (vectorised numpy over CSR)",
        n_cells=len(cells),
        n_tokens=int(cells.lengths.sum()),
        time_s=t,
        time_s_passes=times,
        wall_s=s.wall_s,
        cells_per_s=len(cells) / t,
        tokens_per_s=int(cells.lengths.sum()) / t,
        cpu_percent_avg=s.cpu_percent_avg,
        cpu_percent_peak=s.cpu_percent_peak,
        rss_peak_mib=s.rss_peak_bytes / MIB,
    )
    return row, cells
