"""How ``ispo tune`` runs (:class:`TuneOptions`) and when a measured setting counts
(:class:`Limits`: the constraints, judged the same way when a trial is recorded and when the
summary is written)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ispo.errors import IspoError


@dataclass(frozen=True)
class TuneOptions:
    """How the search runs.

    Attributes
    ----------
    n_trials
        Total measurements wanted, earlier calls included: completed, pruned and failed trials
        (a process that died mid-trial leaves a failed one) count; a proposal of a setting
        already measured is answered from that measurement and does not count.
    min_cosine
        Least mean per-cell cosine to the fp32 fast result for a setting to count.
    min_cosine_cell
        Least cosine of the worst cell (one broken cell fails the setting, whatever the mean).
    memory_cap_mib
        Peak memory allowed (MiB); default 90 % of the GPU's memory, or of host RAM on CPU.
    isp_cells
        Cells (the shortest of the tuning cells) whose delete-all in-silico perturbation is run
        in each setting and compared with fp32: the search is then for ``ispo perturb`` too, and
        ``best.yaml`` gets a ``perturb`` section. 0: embeddings only (no ``perturb`` section).
    isp_tolerance
        Largest |shift difference| to fp32 allowed over those perturbations (a shift is
        1 - cosine, for both ``cos_sim`` and ``cell_cos_sim``).
    repeats, repeat_budget_s
        Timed full passes per trial (at most ``repeats``, stopping early once the budget is
        used); throughput comes from the median pass.
    seed
        Seeds the sampler (with the same history, the same settings are proposed).
    timeout_s
        Stop starting new trials after this many seconds (the study stays resumable).
    """

    n_trials: int = 20
    min_cosine: float = 0.999
    min_cosine_cell: float = 0.995
    memory_cap_mib: float | None = None
    isp_cells: int = 0
    isp_tolerance: float = 1e-4
    repeats: int = 3
    repeat_budget_s: float = 30.0
    seed: int = 0
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise IspoError(f"--n-trials must be at least 1, got {self.n_trials}")
        for name, value in (
            ("min-cosine", self.min_cosine),
            ("min-cosine-cell", self.min_cosine_cell),
        ):
            if not 0.0 < value <= 1.0:
                raise IspoError(f"--{name} must be in (0, 1], got {value}")
        if self.repeats < 1:
            raise IspoError(f"--repeats must be at least 1, got {self.repeats}")
        if self.isp_cells < 0:
            raise IspoError(f"--isp-cells must be 0 (off) or more, got {self.isp_cells}")
        if not self.isp_tolerance > 0.0:
            raise IspoError(f"--isp-tolerance must be positive, got {self.isp_tolerance}")


@dataclass(frozen=True)
class Limits:
    """The constraints a measured setting must meet (the memory cap resolved for the device)."""

    min_cosine: float
    min_cosine_cell: float
    memory_cap_mib: float | None
    isp_cells: int
    isp_tolerance: float

    @classmethod
    def of(cls, opts: TuneOptions, cap: float | None) -> Limits:
        return cls(opts.min_cosine, opts.min_cosine_cell, cap, opts.isp_cells, opts.isp_tolerance)

    def to_dict(self) -> dict[str, Any]:
        """The summary's ``constraints`` (keys kept from earlier versions for ``ispo report``)."""
        return {
            "min_cosine_mean": self.min_cosine,
            "min_cosine_cell": self.min_cosine_cell,
            "memory_cap_mib": self.memory_cap_mib,
            "isp_cells": self.isp_cells,
            "isp_max_shift_diff": self.isp_tolerance if self.isp_cells else None,
            "reference": "fp32 fast path, device default batch size",
        }

    def check(self, m: dict[str, Any]) -> tuple[list[float], str | None]:
        """Optuna constraint values (feasible when all are <= 0) and why the setting fails
        (None when it meets every limit) for a trial's figures ``m``.

        Non-finite results (NaN or infinity: an overflow in the setting's precision) fail every
        constraint with a finite value, since optuna refuses NaN constraints.
        """
        if m.get("nonfinite"):
            return [1.0] * 4, f"not finite: {m['nonfinite']} (an overflow in this precision?)"
        cap, isp = self.memory_cap_mib, m.get("isp_max_shift_diff")
        values = [
            self.min_cosine - m["cos_mean"],
            self.min_cosine_cell - m["cos_min"],
            (m["mem_peak_mib"] - cap) if cap else -1.0,
            (isp - self.isp_tolerance) if self.isp_cells and isp is not None else -1.0,
        ]
        reasons = [
            f"mean cosine {m['cos_mean']:.6f} < {self.min_cosine}",
            f"worst cell cosine {m['cos_min']:.6f} < {self.min_cosine_cell}",
            f"peak memory {m['mem_peak_mib']:.0f} MiB > cap {cap or 0:.0f} MiB",
            f"ISP max |shift difference| {isp or 0:.2e} > {self.isp_tolerance:g}",
        ]
        failed = [r for v, r in zip(values, reasons) if v > 0]
        return values, "; ".join(failed) or None


def finite_or_none(value: Any) -> Any:
    """``value`` with NaN and infinity turned into None (study attributes and JSON stay strict);
    lists and dicts are cleaned item by item."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    return value
