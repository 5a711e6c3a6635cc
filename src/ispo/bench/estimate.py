"""How long a method's row will take, for the progress line printed before it runs."""

from __future__ import annotations

from typing import Any

from ispo.bench.config import BenchConfig
from ispo.bench.flops import device_peak
from ispo.bench.guards import row_budget
from ispo.bench.methods import MethodSpec
from ispo.bench.rows import method_label
from ispo.bench.workload import padded_flops
from ispo.embedding.embed import default_batch_tokens
from ispo.model.load import GeneformerModel
from ispo.tokens import TokenizedCells

# rough model-FLOPs utilisation of each path before one of its rows has run (progress estimates)
ASSUMED_MFU = {"baseline": 0.08, "fast": 0.25}  # measured on a 2-core AMD EPYC: 6-13 %, 13-43 %


def estimate_seconds(
    spec: MethodSpec,
    model: GeneformerModel,
    cells: TokenizedCells,
    config: BenchConfig,
    rates: dict[str, float],
    baseline_rate: float | None = None,
) -> float | None:
    """Rough seconds a method's row will take (warm-up and timed passes, not compilation).

    From the executed FLOP/s (padding included) of the last row on the same path in this run,
    or, before one, the device's peak at :data:`ASSUMED_MFU`; None where neither is known.
    """
    batch_tokens = config.batch_tokens or default_batch_tokens(model.device)
    flops = padded_flops(spec, model, cells, batch_tokens)
    rate = rates.get(spec.path)
    if rate is None:
        peak = device_peak(model.device, spec.compute_dtype, config.peak).flops
        if peak is None:
            return None
        rate = peak * ASSUMED_MFU[spec.path]
    one = flops / rate
    budget = row_budget(config, len(cells), baseline_rate)
    adaptive = spec.family != "batching" and not spec.compile and model.device.type == "cpu"
    if budget and baseline_rate and adaptive:
        one = min(one, budget)
    passes = max(1, min(config.repeats, int(config.repeat_budget_s // max(one, 1e-9))))
    warm = one if spec.compile else one * min(1.0, config.warmup_cells / max(len(cells), 1))
    return warm + passes * one


def progress_line(i: int, total: int, spec: MethodSpec, n: int, estimate: float | None) -> str:
    est = "time unknown" if estimate is None else f"~{estimate:,.0f} s"
    extra = " + compilation" if spec.compile else ""
    return f"[{i}/{total}] {spec.name}: {method_label(spec, n)} on {n} cells, {est}{extra}"


def update_rates(
    rates: dict[str, float],
    spec: MethodSpec,
    model: GeneformerModel,
    ran: TokenizedCells,
    row: dict[str, Any],
    config: BenchConfig,
) -> None:
    """Executed FLOP/s of an fp32 row on its path: what the next rows' estimates start from."""
    if spec.precision == "fp32" and not (spec.int8 or spec.compile):
        bt = config.batch_tokens or default_batch_tokens(model.device)
        rates[spec.path] = padded_flops(spec, model, ran, bt) / row["time_s"]
