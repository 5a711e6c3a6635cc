"""The section of a table made by ``ispo perturb-stats`` (``.csv``, ``.tsv`` or ``.parquet``),
shown as it was computed: its own rows, and the parameters it was made with when they were saved
with it (a Parquet table's metadata, or the ``OUT.config.yaml`` beside it), never recomputed
with defaults. Also the goal-state part of the perturbation section (:func:`goal_context`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ispo.errors import IspoError
from ispo.reporting.figures import Figures
from ispo.reporting.render import fmt
from ispo.reporting.sections import RANDOM_NOTE, TOP_HITS, Image, Section, label

MARKERS: tuple[str, ...] = ()
SUFFIXES = {".csv": ",", ".tsv": "\t", ".parquet": None, ".pq": None}
ID_COLUMNS = ("perturbed_ids", "Ensembl_ID")  # ispo's and Geneformer's names of the gene
RESULT_COLUMNS = ("cell_id", "obs_index")  # a perturb results table, not statistics
MAX_COLUMNS = 10
PARAMS = ("mode", "method", "min_cells", "fdr_alpha", "goal_state", "alt_states", "seed")


def _columns(path: Path) -> list[str]:
    sep = SUFFIXES[path.suffix.lower()]
    if sep is None:
        import pyarrow.parquet as pq

        return pq.read_schema(path).names
    return list(pd.read_csv(path, sep=sep, nrows=0).columns)


def is_stats_table(path: Path) -> bool:
    """A table with a gene column and no per-cell columns (readable, by its header)."""
    if path.suffix.lower() not in SUFFIXES or not path.is_file():
        return False
    try:
        cols = set(_columns(path))
    except Exception:  # unreadable: not recognised in a folder (passed alone, it is read)
        return False
    return bool(cols & set(ID_COLUMNS)) and not cols & set(RESULT_COLUMNS)


def finds(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if is_stats_table(p)]


def _read(path: Path) -> tuple[pd.DataFrame, dict, str | None]:
    """The table, its parameters and where they were read from (None: not saved with it)."""
    sep = SUFFIXES.get(path.suffix.lower(), ",")
    try:
        df = pd.read_parquet(path) if sep is None else pd.read_csv(path, sep=sep)
    except Exception as exc:
        raise IspoError(
            f"cannot read {path} ({type(exc).__name__}): pass a table written by ispo "
            "perturb-stats, or rerun it"
        ) from exc
    if isinstance(df.attrs.get("ispo_stats"), dict):
        return df, df.attrs["ispo_stats"], f"{path.name}'s metadata"
    from ispo.config import run_config_path

    config = run_config_path(path)
    if config.is_file():
        import yaml

        try:
            saved = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError as exc:
            raise IspoError(f"{config} is not valid YAML: rewrite or remove it") from exc
        params = {k: saved.get(k.replace("_", "-"), saved.get(k)) for k in PARAMS}
        return df, {k: v for k, v in params.items() if v is not None}, config.name
    return df, {}, None


def _rows(df: pd.DataFrame, columns: list[str]) -> list[list[Any]]:
    return [list(r) for r in df.head(TOP_HITS)[columns].itertuples(index=False)]


def _summary(df: pd.DataFrame, info: dict) -> str:
    """What the goal-state test found, in the stats package's own words when the table's
    parameters are known; its counts are always the table's own columns."""
    from ispo.perturbation.stats.paired import paired_summary

    if "toward_goal" not in df.columns:
        sig = next((c for c in ("significant", "Sig") if c in df.columns), None)
        if sig is None:
            return ""
        alpha = info.get("fdr_alpha")
        at = f" at FDR < {fmt(alpha)}" if alpha is not None else ""
        test = info.get("test") or "Geneformer's two-sided test against all genes pooled"
        return f"{int(df[sig].astype(bool).sum()):,} genes significant{at} ({test})."
    tested = df["tested"].astype(bool) if "tested" in df.columns else pd.Series(True, df.index)
    counts = {"n_tested": int(tested.sum()), "n_untested": int((~tested).sum())}
    if info.get("min_cells") is not None and info.get("fdr_alpha") is not None:
        table = df.copy()
        table.attrs["ispo_stats"] = {**info, **counts}
        return paired_summary(table)
    return (
        f"{int(df['toward_goal'].sum()):,} genes move cells toward the goal and "
        f"{int(df['away_from_goal'].sum()):,} away from it, of {counts['n_tested']:,} genes "
        "tested, at the FDR threshold the table was made with."
    )


def goal_context(df: pd.DataFrame, info: dict, origin: str, images: list[Image]) -> dict:
    """The goal-state statistics shown: how they were made (``origin``), what they found,
    the top rows of the table as it is."""
    from ispo.perturbation.stats.paired import SUMMARY_COLUMNS

    cols = [c for c in SUMMARY_COLUMNS if c in df.columns]
    if len(cols) < 3:
        cols = list(df.columns[:MAX_COLUMNS])
    return dict(
        goal_state=info.get("goal_state"),
        origin=origin,
        summary=_summary(df, info),
        headers=cols,
        rows=_rows(df, cols),
        more=len(df) if len(df) > TOP_HITS else 0,
        images=images,
    )


def _origin(path: Path, info: dict, source: str | None) -> str:
    if source is None:
        return (
            f"As computed by ispo perturb-stats; its parameters were not saved with it (no "
            f"{path.name}.config.yaml beside it): shown as the table holds it."
        )
    said = ", ".join(
        f"{k.replace('_', ' ')} {fmt(info[k]) if not isinstance(info[k], list) else info[k]}"
        for k in PARAMS
        if k in info
    )
    return f"As computed by ispo perturb-stats ({said}; from {source}), not recomputed."


def section(path: Path, figures: Figures) -> Section:
    df, info, source = _read(path)
    images = []
    volcano = figures.copy(
        path.with_name(f"{path.stem}.volcano.png"),
        f"{path.stem}-volcano",
        "volcano: mean shift toward the goal vs -log10 FDR",
    )
    if volcano is not None:
        images.append(volcano)
    random_init = bool(info.get("random_init"))
    notes = [RANDOM_NOTE.format(what="this perturbation run")] if random_init else []
    origin = _origin(path, info, source)
    if info.get("mode") == "goal_state_shift" or "toward_goal" in df.columns:
        goal = goal_context(df, info, origin, images)
        return Section("stats.md.j2", dict(label=label(path), notes=notes, goal=goal), random_init)
    cols = list(df.columns[:MAX_COLUMNS])
    context = dict(
        label=label(path),
        notes=notes,
        goal=None,
        origin=origin,
        headers=cols,
        rows=_rows(df, cols),
        more=len(df) if len(df) > TOP_HITS else 0,
        images=images,
    )
    return Section("stats.md.j2", context, random_init)
