"""Which cells a run uses: Geneformer's ``filter_data`` and ``max_ncells``, for every command.

``ispo embed`` chooses input rows from ``obs`` before reading any counts; ``ispo perturb`` chooses
among the cells that tokenized. Both keep cells whose ``obs`` values are among the allowed ones
(:func:`filter_mask`) and draw at most ``max_ncells`` as Geneformer does (:func:`sample`): its
``downsample_and_sort`` shuffles the filtered cells with ``Dataset.shuffle(seed=42)`` (NumPy's
``default_rng(42).permutation``) and keeps the first ``max_ncells``, so the same cells are chosen
from the same filtered cells. ispo then runs them in input order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ispo.errors import IspoError

GENEFORMER_SEED = 42  # the seed of Geneformer's downsample_and_sort


def passes(flags: np.ndarray) -> np.ndarray:
    """``obs["filter_pass"]`` as booleans, whether stored as 0/1, bools or strings."""
    if flags.dtype.kind in "biuf":
        return flags.astype(bool)
    return (
        ~pd.Series(flags).astype(str).str.strip().str.lower().isin(["0", "false", "0.0"]).to_numpy()
    )


def filter_mask(obs: pd.DataFrame, cell_filter: dict | None) -> np.ndarray:
    """Rows of ``obs`` whose value of each filter key is among its allowed values (compared as
    text, so ``--filter batch=1`` matches an integer column)."""
    keep = np.ones(len(obs), dtype=bool)
    for key, allowed in (cell_filter or {}).items():
        if key not in obs.columns:
            raise IspoError(
                f"filter key {key!r} is not an obs column: choose one of {list(obs.columns)[:10]}"
            )
        allowed = allowed if isinstance(allowed, (list, tuple, set)) else [allowed]
        keep &= obs[key].astype(str).isin([str(a) for a in allowed]).to_numpy()
    return keep


def sample(positions: np.ndarray, max_ncells: int | None) -> np.ndarray:
    """At most ``max_ncells`` of ``positions``, drawn as Geneformer draws them, in input order."""
    if max_ncells is None or len(positions) <= max_ncells:
        return positions
    if max_ncells < 1:
        raise IspoError(f"--max-ncells must be at least 1, not {max_ncells}")
    drawn = np.random.default_rng(GENEFORMER_SEED).permutation(len(positions))[:max_ncells]
    return positions[np.sort(drawn)]


def choose_rows(
    obs: pd.DataFrame,
    cell_filter: dict | None = None,
    max_ncells: int | None = None,
    per: str | None = None,
) -> np.ndarray | None:
    """Boolean mask of the input rows to embed, or None for every row (nothing asked).

    Rows with ``filter_pass == 0`` are never drawn (Geneformer's tokenizer drops them before).
    With ``per`` (an obs column: the cell states) up to ``max_ncells`` rows are drawn from each of
    its values, as Geneformer's ``get_state_embs`` draws each state's cells.
    """
    if per is not None and per not in obs.columns:
        raise IspoError(
            f"state key {per!r} is not an obs column: choose one of {list(obs.columns)[:10]}"
        )
    if not cell_filter and max_ncells is None:
        return None
    keep = filter_mask(obs, cell_filter)
    if "filter_pass" in obs.columns:
        keep &= passes(obs["filter_pass"].to_numpy())
    rows = np.flatnonzero(keep)
    if per is None:
        chosen = sample(rows, max_ncells)
    else:
        labels = obs[per].astype(str).to_numpy()[rows]
        chosen = np.sort(
            np.concatenate([sample(rows[labels == v], max_ncells) for v in np.unique(labels)])
        )
    mask = np.zeros(len(obs), dtype=bool)
    mask[chosen] = True
    if not mask.any():
        raise IspoError("no cell left after --filter: check the filter keys and values")
    return mask
