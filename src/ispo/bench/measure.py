"""Measure one method (:func:`run_method`): build its module, warm it up, time full passes
over the cells, and fill its row (time, rates, MFU, CPU, GPU, memory, cosine to the baseline).

Inside one :class:`~ispo.runtime.profiler.Profiler` block:

1. setup: build the module (quantize, wrap in ``torch.compile``) — timed, not in throughput;
2. warm-up: the method's first batch, at most ``warmup_cells`` of it (a full pass for compiled
   methods, which compile per shape);
3. steady state: full passes over all cells, the device synchronised around each, repeated while
   cheap (``repeats`` at most, within ``repeat_budget_s``); throughput is from the median pass.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ispo.bench.config import BenchConfig
from ispo.bench.flops import device_peak, mfu
from ispo.bench.guards import TooSlow, fit_cells
from ispo.bench.methods import MethodSpec, Prepared, Unavailable, prepare
from ispo.bench.rows import MIB, batching_text, blank_row, method_label, mib
from ispo.bench.workload import memory_skip, method_batches, workload
from ispo.embedding.embed import default_batch_tokens, embed_cells
from ispo.model.load import GeneformerModel
from ispo.peak import Peak
from ispo.runtime.pool import rowwise_cosine
from ispo.runtime.profiler import Profiler, synchronize
from ispo.tokens import TokenizedCells

log = logging.getLogger(__name__)


def free_device(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def cosine_consistency(x: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Min and mean cosine similarity between matching rows of ``x`` and ``ref``."""
    cos = rowwise_cosine(x, ref)
    return float(cos.min()), float(cos.mean())


@dataclass
class MethodRun:
    """One method's run in progress: what it executes and what it has measured so far."""

    spec: MethodSpec
    model: GeneformerModel
    config: BenchConfig
    kwargs: dict[str, Any]
    baseline_rate: float | None = None
    prep: Prepared | None = None
    setup_s: float = 0.0
    warmup_s: float | None = None
    times: list[float] = field(default_factory=list)

    @property
    def adaptive(self) -> bool:
        """The CPU time guard and row budget apply: CPU only, never the baseline (the
        reference, ``baseline_rate`` None) nor compiled methods (their warm-up compiles)."""
        return (
            self.baseline_rate is not None
            and self.model.device.type == "cpu"
            and not self.spec.compile
        )

    def embed(self, cells: TokenizedCells) -> np.ndarray:
        net = None if self.prep is None else self.prep.net
        return embed_cells(cells, self.model, net=net, **self.kwargs)


def _fit(run: MethodRun, cells: TokenizedCells, seconds: float, warm: TokenizedCells):
    """The cells the timed passes run on after a warm-up over ``warm`` in ``seconds``."""
    per_token = seconds / max(int(warm.lengths.sum()), 1)
    return fit_cells(run.spec, run.config, cells, per_token, run.baseline_rate)


def warm_up(run: MethodRun, cells: TokenizedCells, first: np.ndarray) -> TokenizedCells:
    """Build the method's module, warm it up, and return the cells its timed passes run on.

    Compiled methods warm up on a full pass (they compile per shape); others on the first
    batch (``first``), capped at ``warmup_cells`` so a batch as large as the whole run is not
    paid twice. On CPU a 2-cell probe comes first, so a hopeless method costs little.
    """
    spec, dev = run.spec, run.model.device
    t0 = time.perf_counter()
    run.prep = prepare(spec, run.model, run.model.layers_for(run.config.emb_layer))
    run.setup_s = time.perf_counter() - t0
    warm = cells if spec.compile else cells.subset(first[: run.config.warmup_cells])
    t1 = time.perf_counter()
    if run.adaptive and len(warm) > 2:
        probe = cells.subset(first[:2])
        run.embed(probe)
        run.warmup_s = time.perf_counter() - t1
        cells = _fit(run, cells, run.warmup_s, probe)
    t2 = time.perf_counter()
    try:
        run.embed(warm)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:
        if spec.compile:  # a compiler that cannot build here: say so, do not fake it
            raise Unavailable(
                f"torch.compile failed on {dev.type}: {type(exc).__name__}:"
                f" {str(exc).strip().splitlines()[0][:200]}"
            ) from exc
        raise
    synchronize(dev)
    run.warmup_s = time.perf_counter() - t1
    if run.adaptive:
        cells = _fit(run, cells, time.perf_counter() - t2, warm)
    return cells


def timed_passes(
    run: MethodRun, cells: TokenizedCells, on_pass: Callable[[str, float], None] | None
) -> np.ndarray:
    """Full passes over ``cells``, the device synchronised around each, repeated while cheap
    (``repeats`` at most, within ``repeat_budget_s``); returns the last pass's embeddings."""
    dev = run.model.device
    while True:
        synchronize(dev)
        t = time.perf_counter()
        emb = run.embed(cells)
        synchronize(dev)
        run.times.append(time.perf_counter() - t)
        if on_pass is not None:
            on_pass(run.spec.name, run.times[-1])
        total = sum(run.times)
        if (
            len(run.times) >= run.config.repeats
            or total + run.times[-1] > run.config.repeat_budget_s
        ):
            return emb


def measured_figures(
    run: MethodRun, cells: TokenizedCells, stats: Any, peak: Peak
) -> dict[str, Any]:
    """The row's measured figures: time from the median pass, rates, MFU, CPU, GPU, memory."""
    t = float(np.median(run.times))
    batch_tokens = run.kwargs["batch_tokens"]
    fixed = workload(run.spec, run.model, cells, batch_tokens, run.config.emb_layer)
    assert run.prep is not None
    return {
        **fixed,
        "backend": run.prep.backend,
        "int8_linear_layers": run.prep.int8_linear_layers,
        "setup_s": run.setup_s,
        "warmup_s": run.warmup_s,
        "time_s": t,
        "time_s_passes": run.times,
        "wall_s": stats.wall_s,
        "cells_per_s": len(cells) / t,
        "tokens_per_s": fixed["n_tokens"] / t,
        "achieved_tflops": fixed["model_flops"] / t / 1e12,
        "mfu": mfu(fixed["model_flops"], t, peak.flops),
        "cpu_percent_avg": stats.cpu_percent_avg,
        "cpu_percent_peak": stats.cpu_percent_peak,
        # CPU time per cell: on a shared machine, what the method cost whatever it waited for
        "cpu_s_per_cell": None
        if stats.cpu_percent_avg is None
        else t * stats.cpu_percent_avg / 100 / len(cells),
        "gpu_util_avg": stats.gpu_util_avg,
        "gpu_util_peak": stats.gpu_util_peak,
        "rss_peak_mib": stats.rss_peak_bytes / MIB,
        "gpu_mem_peak_mib": mib(stats.gpu_mem_peak_bytes),
        "gpu_mem_used_peak_mib": mib(stats.gpu_mem_used_peak_bytes),
    }


def embed_kwargs(spec: MethodSpec, config: BenchConfig, batch_tokens: int) -> dict[str, Any]:
    return {
        "method": spec.path,
        "precision": "fp32" if spec.int8 else spec.precision,
        "emb_layer": config.emb_layer,
        "batch_tokens": batch_tokens,
        "batch_size": spec.batch_size or 10,
    }


def planned_row(
    spec: MethodSpec,
    model: GeneformerModel,
    cells: TokenizedCells,
    config: BenchConfig,
    batch_tokens: int,
    peak: Peak,
) -> dict[str, Any]:
    """A method's row before it runs: what it is and the work it will do on ``cells``."""
    return blank_row(
        method=spec.name,
        label=method_label(spec, len(cells)),
        family=spec.family,
        status="ok",
        path=spec.path,
        precision="int8" if spec.int8 else spec.precision,
        batching=batching_text(spec, batch_tokens),
        peak_tflops=None if peak.flops is None else peak.flops / 1e12,
        peak_source=peak.source,
        **workload(spec, model, cells, batch_tokens, config.emb_layer),
    )


def run_method(
    spec: MethodSpec,
    model: GeneformerModel,
    cells: TokenizedCells,
    config: BenchConfig,
    *,
    reference: np.ndarray | None = None,
    baseline_rate: float | None = None,
    on_pass: Callable[[str, float], None] | None = None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Measure one method; returns its row and its embeddings (None if it did not run).

    ``reference``: the baseline's embeddings (for consistency); ``baseline_rate``: its cells/s
    (for the CPU time guard, ``config.max_slowdown``, and row budget, ``config.row_budget_s``).
    """
    dev = model.device
    batch_tokens = config.batch_tokens or default_batch_tokens(dev)
    batches = method_batches(spec, cells, batch_tokens)
    peak = device_peak(dev, spec.compute_dtype, config.peak)
    row = planned_row(spec, model, cells, config, batch_tokens, peak)
    reason = memory_skip(spec, model, cells, batches, row, config)
    if reason is not None:
        row.update(status="skipped", reason=reason)
        log.warning("%s: skipped: %s", spec.name, reason)
        return row, None
    run = MethodRun(spec, model, config, embed_kwargs(spec, config, batch_tokens), baseline_rate)
    emb, ran = None, cells
    try:
        with Profiler(device=dev) as prof:
            ran = warm_up(run, cells, batches[0])
            prof.mark_steady()
            emb = timed_passes(run, ran, on_pass)
    except Unavailable as exc:
        row.update(status="unavailable", reason=str(exc))
    except TooSlow as exc:
        row.update(status="skipped", reason=str(exc), warmup_s=run.warmup_s)
    except torch.OutOfMemoryError as exc:
        reason = f"out of {dev.type} memory: {str(exc).splitlines()[0][:200]}"
        row.update(status="failed", reason=reason)
    if row["status"] != "ok":  # freed here, once the exception (and its frames) are gone
        log.warning("%s: %s: %s", spec.name, row["status"], row["reason"])
        run.prep = emb = None
        free_device(dev)
        return row, None
    row.update(
        measured_figures(run, ran, prof.stats, peak), label=method_label(spec, len(cells), len(ran))
    )
    if reference is not None and emb is not None:
        row["cos_min"], row["cos_mean"] = cosine_consistency(emb, reference[: len(emb)])
    run.prep = None
    free_device(dev)
    return row, emb
