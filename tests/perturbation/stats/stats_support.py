"""Results tables for the statistics tests: small hand-made ones and planted ones.

Imported as ``from stats_support import ...`` (a plain module beside the tests that use it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from ispo.perturbation.stats.simulate import gene_id as gid

STATES = {"state_key": "disease", "start_state": "dcm", "goal_state": "nf", "alt_states": ["hcm"]}

__all__ = ["STATES", "by_kind", "gid", "make_results", "reference_rank_test", "rows_of"]


def rows_of(cell, gene, symbols, **values) -> pd.DataFrame:
    """A results table like the engine's: one row per (cell, deleted gene), then ``values``."""
    base = {
        "cell_id": [f"cell{c}" for c in cell],
        "obs_index": np.asarray(cell, np.int64),
        "perturbed_ids": [gid(g) for g in gene],
        "perturbed_symbols": symbols,
        "perturb_type": "delete",
        "n_genes": 500,
    }
    return pd.DataFrame({**base, **values})


def make_results(
    n_genes=30, n_cells=40, planted=(7,), shift=0.05, seed=0, states=True, cos_drop=0.0
) -> pd.DataFrame:
    """Long table: every gene perturbed in every cell; shifts ~ N(0, 0.01), planted genes +shift.

    ``cos_drop`` lowers the planted genes' ``cos_sim`` (stronger effect) by that much.
    """
    rng = np.random.default_rng(seed)
    gene = np.repeat(np.arange(n_genes), n_cells)
    cell = np.tile(np.arange(n_cells), n_genes)
    hit = np.isin(gene, planted)
    df = rows_of(
        cell,
        gene,
        [f"G{g}" for g in gene],
        cos_sim=(0.99 + rng.normal(0, 0.002, gene.size) - cos_drop * hit).astype(np.float32),
        cell_cos_sim=(0.999 + rng.normal(0, 0.0005, gene.size)).astype(np.float32),
    )
    if states:
        df["shift_nf"] = (rng.normal(0, 0.01, gene.size) + shift * hit).astype(np.float32)
        df["shift_hcm"] = rng.normal(0, 0.01, gene.size).astype(np.float32)
        df.attrs["cell_states"] = dict(STATES)
    return df


def by_kind(out: pd.DataFrame, kinds: pd.Series, column: str) -> dict[str, int]:
    """How many genes of each planted kind have ``column`` true."""
    kind = out["perturbed_ids"].map(kinds)
    return {k: int(out.loc[kind == k, column].sum()) for k in ("toward", "away", "single", "null")}


def reference_rank_test(values, genes, cells, n_genes):
    """Cell by cell with scipy: midranks, normal scores, their exact permutation moments."""
    total, var, pct = np.zeros(n_genes), np.zeros(n_genes), np.zeros(n_genes)
    n = np.zeros(n_genes)
    for c in np.unique(cells):
        rows = np.flatnonzero(cells == c)
        m = rows.size
        r = sps.rankdata(values[rows])
        a = sps.norm.ppf(r / (m + 1))
        for row, score, rank in zip(rows, a, r):
            total[genes[row]] += score - a.mean()
            var[genes[row]] += a.var()
            pct[genes[row]] += (rank - 0.5) / m
            n[genes[row]] += 1
    return total / np.sqrt(var), pct / n
