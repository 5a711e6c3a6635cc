"""What a benchmark run returns: one row per method, every row with the same keys
(:data:`ROW_KEYS`, None where a figure does not apply), and the row titles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ispo.bench.methods import MethodSpec

MIB = float(1 << 20)


ROW_KEYS = [
    "method",
    "label",
    "family",
    "status",
    "reason",
    "path",
    "precision",
    "batching",
    "backend",
    "n_cells",
    "n_tokens",
    "n_padded_tokens",
    "pad_fraction",
    "n_batches",
    "setup_s",
    "warmup_s",
    "time_s",
    "time_s_passes",
    "wall_s",
    "cells_per_s",
    "tokens_per_s",
    "speedup",
    "model_flops",
    "executed_flops",
    "achieved_tflops",
    "peak_tflops",
    "peak_source",
    "mfu",
    "cpu_percent_avg",
    "cpu_percent_peak",
    "cpu_s_per_cell",
    "gpu_util_avg",
    "gpu_util_peak",
    "rss_peak_mib",
    "gpu_mem_peak_mib",
    "gpu_mem_used_peak_mib",
    "est_batch_mem_mib",
    "int8_linear_layers",
    "cos_min",
    "cos_mean",
]


@dataclass
class BenchResult:
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)

    def row(self, method: str) -> dict[str, Any]:
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(method)


def blank_row(**values: Any) -> dict[str, Any]:
    row = dict.fromkeys(ROW_KEYS)
    row.update(values)
    return row


def mib(n_bytes: int | None) -> float | None:
    return None if n_bytes is None else n_bytes / MIB


def method_label(spec: MethodSpec, n_cells: int, n_run: int | None = None) -> str:
    """The row title, saying where the run differs from the method's nominal setting.

    ``bs=256→16``: a batch size above the cells run (one batch of all of them);
    ``[3 of 16 cells]``: a slow method timed on fewer cells
    (:func:`ispo.bench.guards.fit_cells`).
    """
    n_run = n_cells if n_run is None else n_run
    bs = spec.batch_size
    if spec.path == "baseline" and bs and bs > n_run:
        label = spec.label.replace("{bs}", f"{bs}→{n_run}")
    else:
        label = spec.title()
    return label + (f" [{n_run} of {n_cells} cells]" if n_run < n_cells else "")


def batching_text(spec: MethodSpec, batch_tokens: int) -> str:
    if spec.path == "fast":
        return f"token budget {batch_tokens:,}, length-sorted"
    return f"{spec.batch_size} cells, input order, padded"


def failed_row(spec: MethodSpec, exc: Exception) -> dict[str, Any]:
    return blank_row(
        method=spec.name,
        label=spec.title(),
        family=spec.family,
        path=spec.path,
        status="failed",
        reason=f"{type(exc).__name__}: {str(exc)[:200]}",
    )
