"""Reading what the modes work on: the results table (a DataFrame, or a Parquet file with the
run's metadata), its columns, and the codes of its genes and cells."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ispo.errors import IspoError

ID, SYMBOL = "perturbed_ids", "perturbed_symbols"
#: What to do when the results table lacks a column every mode needs.
FIX = "pass the per-cell results table written by ispo perturb"


def _read_metadata(path: Path) -> dict | None:
    """The run's metadata: the Parquet schema's ``ispo`` entry, else a JSON file beside it."""
    import pyarrow.parquet as pq

    try:
        raw = (pq.read_schema(path).metadata or {}).get(b"ispo")
        if raw:
            return json.loads(raw)
    except Exception:  # not a single Parquet file (a dataset folder...): try the JSON files
        pass
    for side in (
        path.with_suffix(".json"),
        path.with_name(path.name + ".json"),
        path.with_suffix(".meta.json"),
    ):
        if side.is_file():
            try:
                return json.loads(side.read_text())
            except json.JSONDecodeError as exc:
                raise IspoError(
                    f"metadata file {side} is not valid JSON ({exc}): rewrite it or remove it"
                ) from exc
    return None


def load_table(table: pd.DataFrame | str | os.PathLike | None, what: str) -> pd.DataFrame | None:
    """A DataFrame as-is, or a Parquet file read with its run metadata in ``attrs``."""
    if table is None or isinstance(table, pd.DataFrame):
        return table
    path = Path(table)
    if not path.exists():
        raise IspoError(
            f"{what} {path} does not exist: pass the Parquet file written by ispo perturb"
        )
    try:
        df = pd.read_parquet(path)
    except Exception as exc:
        raise IspoError(
            f"cannot read {what} {path} as Parquet ({type(exc).__name__}): pass the "
            ".parquet file written by ispo perturb"
        ) from exc
    meta = _read_metadata(path)
    if meta is not None:
        df.attrs["ispo"] = meta
        if "cell_states" in meta:
            df.attrs["cell_states"] = meta["cell_states"]
    return df


def cell_states(df: pd.DataFrame) -> dict | None:
    """The run's cell states (``goal_state``, ``alt_states``...) from the table's metadata."""
    states = df.attrs.get("cell_states")
    if states is None and isinstance(df.attrs.get("ispo"), dict):
        states = df.attrs["ispo"].get("cell_states")
    return states if isinstance(states, dict) else None


def require(df: pd.DataFrame, columns: Sequence[str], what: str, fix: str) -> None:
    """One line naming the columns ``df`` lacks, and ``fix``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise IspoError(f"{what} lacks column(s) {', '.join(missing)}: {fix}")


def shift_column(df: pd.DataFrame, state: str, what: str) -> str:
    """``shift_<state>``, checked present (the error lists the states the run has)."""
    col = f"shift_{state}"
    if col not in df.columns:
        have = sorted(c[len("shift_") :] for c in df.columns if c.startswith("shift_"))
        raise IspoError(
            f"{what} has no column {col} for state {state!r} (states present: "
            f"{', '.join(have) or 'none'}): rerun ispo perturb with cell states that "
            f"include {state!r}, or choose a state present"
        )
    return col


def gene_codes(df: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """(code of each row, one row per perturbation with its ids and symbols) in first-seen order."""
    codes, uniques = pd.factorize(df[ID], sort=False)
    _, first = np.unique(codes, return_index=True)  # codes are 0..k-1 in first-seen order
    genes = pd.DataFrame(
        {ID: np.asarray(uniques, dtype=object), SYMBOL: df[SYMBOL].to_numpy(dtype=object)[first]}
    )
    return codes, genes


def finite(values: pd.Series, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-NaN values (float64) and their codes."""
    v = values.to_numpy(dtype=np.float64)
    ok = ~np.isnan(v)
    return v[ok], codes[ok]


def group_mean(v: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and count of ``v`` per code (NaN mean for a code without values)."""
    n = np.bincount(codes, minlength=n_groups)
    s = np.bincount(codes, weights=v, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan), n


def cell_codes(df: pd.DataFrame) -> np.ndarray:
    """One code per cell (``obs_index``, else ``cell_id``): the blocks of the paired test."""
    key = next((k for k in ("obs_index", "cell_id") if k in df.columns), None)
    if key is None:
        raise IspoError(
            "results table lacks obs_index and cell_id, which the paired test needs to compare "
            "genes within a cell: pass the table written by ispo perturb, or use "
            "method='geneformer'"
        )
    return pd.factorize(df[key], sort=False)[0]


def results_table(results: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """The engine's results, loaded and checked for the columns every mode needs."""
    df = load_table(results, "results table")
    if df is None:
        raise IspoError("results is None: pass the results table or its Parquet path")
    require(df, [ID, SYMBOL], "results table", FIX)
    if len(df) == 0:
        raise IspoError(
            "results table is empty: perturb at least one gene in one cell (check "
            "the gene list and the start state)"
        )
    if df[ID].isna().any():
        raise IspoError(
            "results table has rows without perturbed_ids: pass the table written "
            "by ispo perturb, unedited"
        )
    return df


def side_table(
    table: pd.DataFrame | str | os.PathLike | None,
    what: str,
    absent: str,
    columns: Sequence[str],
    fix: str,
    refill: str,
) -> pd.DataFrame:
    """A second table a mode needs (null run, gene table): given, with ``columns``, not empty."""
    df = load_table(table, what)
    if df is None:
        raise IspoError(absent)
    require(df, columns, what, fix)
    if len(df) == 0:
        raise IspoError(f"{what} is empty: {refill}")
    return df


def states(
    df: pd.DataFrame, goal_state: str | None, alt_states: Sequence[str] | None
) -> tuple[str | None, list[str]]:
    """The goal and alt states: as given, else the run's cell states."""
    run_states = cell_states(df)
    if goal_state is None and run_states is not None:
        goal_state = run_states.get("goal_state")
    if alt_states is None:
        alt_states = (run_states or {}).get("alt_states") or []
    return goal_state, [a for a in alt_states if a is not None and a != goal_state]


def value_column(df: pd.DataFrame, goal: str | None) -> str:
    """``cos_sim``, or the goal state's shift column when a goal state is known."""
    value = "cos_sim" if goal is None else shift_column(df, goal, "results table")
    require(df, [value], "results table", FIX)
    return value
