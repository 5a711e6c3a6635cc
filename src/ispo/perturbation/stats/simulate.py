"""Results tables with known effects, to check that the statistics find what is there and call
nothing else (the calibration tests and ``benchmarks/stats_calibration.py`` use them).

Each table looks like ``ispo perturb``'s with cell states: one row per (cell, deleted gene) and a
``shift_<goal>`` column. A cell's shifts are its own offset (its distance to the goal, shared by
all its genes) plus each gene's planted effect plus noise of a chosen shape, so the within-cell
tests meet what real shifts look like: most deletions do almost nothing, a few move a cell a lot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ispo.errors import IspoError

#: Noise shapes: each draw has mean 0; the finite-variance ones have sd 1 before scaling.
NOISE_SHAPES = ("normal", "exponential", "lognormal", "t2", "heteroscedastic")
#: The planted kinds of gene: toward (+effect), away (-effect), seen in one cell only (+3 x
#: effect there), null (no effect).
KINDS = ("toward", "away", "single", "null")
STATES = {"state_key": "state", "start_state": "start", "goal_state": "end", "alt_states": []}


@dataclass(frozen=True)
class Design:
    """How a simulated run is made (the defaults: 300 genes, 40 cells, 10 toward, 10 away)."""

    n_cells: int = 40
    n_toward: int = 10
    n_away: int = 10
    n_single: int = 20
    n_null: int = 260
    effect: float = 0.015
    noise_sd: float = 0.01
    offset_sd: float = 0.01
    p_detect: float = 0.7

    def kinds(self) -> np.ndarray:
        """Each gene's kind, in gene order."""
        counts = (self.n_toward, self.n_away, self.n_single, self.n_null)
        return np.repeat(np.array(KINDS), counts)


def noise(shape: str, rng: np.random.Generator, cell: np.ndarray, n_cells: int) -> np.ndarray:
    """One unit-scale draw per row of cell ``cell[i]``.

    ``exponential``: Exp(1) - 1 (skew 2); ``lognormal``: LN(0, 1) centred and scaled to sd 1
    (skew 6.2); ``t2``: Student t with 2 degrees of freedom (infinite variance);
    ``heteroscedastic``: normal times a scale of each cell's own, exp(N(0, 1)) (cells differ
    up to ~50-fold in spread).
    """
    n = cell.size
    if shape == "normal":
        return rng.standard_normal(n)
    if shape == "exponential":
        return rng.exponential(size=n) - 1.0
    if shape == "lognormal":
        return (rng.lognormal(size=n) - np.exp(0.5)) / np.sqrt((np.e - 1) * np.e)
    if shape == "t2":
        return rng.standard_t(2, size=n)
    if shape == "heteroscedastic":
        return rng.standard_normal(n) * np.exp(rng.standard_normal(n_cells))[cell]
    raise IspoError(f"unknown noise shape {shape!r}: choose one of {', '.join(NOISE_SHAPES)}")


def gene_id(i: int) -> str:
    """The Ensembl-like id of simulated gene ``i``."""
    return f"ENSG{i:011d}"


def simulated_results(
    design: Design = Design(), shape: str = "normal", seed: int = 0
) -> tuple[pd.DataFrame, pd.Series]:
    """A results table and each gene's planted kind (a Series indexed by gene id).

    Every non-single gene is seen in each cell with probability ``p_detect``; a single gene in
    one random cell. The random stream is ``default_rng([seed, index of shape])``, so each noise
    shape gets its own draws for the same seed.
    """
    rng = np.random.default_rng([seed, NOISE_SHAPES.index(shape)])
    kinds = design.kinds()
    detect = rng.random((kinds.size, design.n_cells)) < design.p_detect
    single = kinds == "single"
    detect[single] = False
    detect[single, rng.integers(0, design.n_cells, single.sum())] = True
    gene, cell = np.nonzero(detect)
    offset = rng.normal(0, design.offset_sd, design.n_cells)
    effect = np.select(
        [kinds == "toward", kinds == "away", single],
        [design.effect, -design.effect, 3 * design.effect],
        0.0,
    )
    shift = offset[cell] + effect[gene] + design.noise_sd * noise(shape, rng, cell, design.n_cells)
    ids = np.array([gene_id(g) for g in range(kinds.size)], dtype=object)
    df = pd.DataFrame(
        {
            "cell_id": [f"cell{c}" for c in cell],
            "obs_index": cell.astype(np.int64),
            "perturbed_ids": ids[gene],
            "perturbed_symbols": [f"{kinds[g]}{g}" for g in gene],
            "perturb_type": "delete",
            "n_genes": np.int32(500),
            "cos_sim": np.float32(0.99),
            f"shift_{STATES['goal_state']}": shift.astype(np.float32),
        }
    )
    df.attrs["cell_states"] = dict(STATES)
    return df, pd.Series(kinds, index=ids)
