"""The CPU guards that keep a methods table within minutes: a row timed on fewer cells when its
pass would exceed the row budget, and a method skipped when it would be hopelessly slower than
the baseline (fp16 autocast on a CPU without fp16 arithmetic)."""

from __future__ import annotations

import logging

import numpy as np

from ispo.bench.config import BenchConfig
from ispo.bench.methods import MethodSpec
from ispo.tokens import TokenizedCells

log = logging.getLogger(__name__)
GUARD_FLOOR_S = 60.0  # the CPU time guard never skips a method whose pass would take less
# the row budget is at least this many baseline passes: only a method several times slower than
# the baseline (fp16 without fp16 units) is ever shortened, never one the load made look slower
ROW_BUDGET_BASELINE_PASSES = 3.0


class TooSlow(Exception):
    """The warm-up predicts a pass too slow to be worth running (see ``max_slowdown``)."""


def check_pace(estimate: float, n_cells: int, base_rate: float, max_slowdown: float) -> None:
    """Raise :class:`TooSlow` when a pass predicted to take ``estimate`` seconds is more than
    ``max_slowdown`` times the baseline's over the same ``n_cells`` (``base_rate`` cells/s).

    For instance fp16 autocast on a CPU without fp16 arithmetic runs 10-20x slower than fp32:
    hours, not minutes. Used on CPU only, where a first call costs little extra; on a GPU a cold
    first call (library initialisation) would make the estimate unreliable. A pass predicted
    to take under ``GUARD_FLOOR_S`` always runs: it is not worth skipping.
    """
    base = n_cells / base_rate
    if estimate > max_slowdown * base and estimate > GUARD_FLOOR_S:
        raise TooSlow(
            f"the warm-up predicts a pass of ~{estimate:.0f} s, {estimate / base:.0f}x the "
            f"baseline's {base:.0f} s (limit --max-slowdown {max_slowdown:g}; 0 for none)"
        )


def row_budget(config: BenchConfig, n_cells: int, baseline_rate: float | None) -> float | None:
    """Seconds a row's timed pass may take before it runs on fewer cells (None: no limit):
    ``config.row_budget_s``, or ``ROW_BUDGET_BASELINE_PASSES`` baseline passes if longer."""
    budget = config.row_budget_s
    if budget and baseline_rate:
        budget = max(budget, ROW_BUDGET_BASELINE_PASSES * n_cells / baseline_rate)
    return budget


def fit_cells(
    spec: MethodSpec,
    config: BenchConfig,
    cells: TokenizedCells,
    per_token_s: float,
    baseline_rate: float | None,
) -> TokenizedCells:
    """The cells the timed passes of ``spec`` run on, from its warm-up's seconds per token.

    The pass is predicted per token (the warm-up's cells may be the longest ones). A method
    whose pass would take longer than the row budget (``config.row_budget_s``, or 3 times the
    baseline's pass if longer) runs on the first cells that fit it, at least one; its row says
    how many. The table keeps a slow method (fp16 without fp16 units) instead of skipping it.
    Then the ``max_slowdown`` guard (:func:`check_pace`) applies.
    """
    # batching rows measure how the batch size plays out over all cells: never shortened
    budget = None if spec.family == "batching" else row_budget(config, len(cells), baseline_rate)
    if budget and per_token_s * cells.lengths.sum() > budget and len(cells) > 1:
        fits = np.cumsum(cells.lengths) * per_token_s <= budget
        keep = max(1, int(fits.sum()))
        log.info(
            "%s: a pass would take ~%.0f s: timed on %d cells",
            spec.name,
            per_token_s * cells.lengths.sum(),
            keep,
        )
        cells = cells.subset(np.arange(keep))
    if config.max_slowdown and baseline_rate is not None:
        estimate = per_token_s * float(cells.lengths.sum())
        check_pace(estimate, len(cells), baseline_rate, config.max_slowdown)
    return cells
