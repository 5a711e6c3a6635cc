"""Run the methods table: every method on the same tokenized cells, in one process.

For each method (see :mod:`ispo.bench.methods`), inside one :class:`~ispo.runtime.profiler.Profiler`
block:

1. setup: build the module (quantize, wrap in ``torch.compile``) — timed, not in throughput;
2. warm-up: the method's first batch, at most ``warmup_cells`` of it (a full pass for compiled
   methods, which compile per shape);
3. steady state: full passes over all cells, the device synchronised around each, repeated while
   cheap (``repeats`` at most, within ``repeat_budget_s``); throughput is from the median pass.

Every row has the same keys (None where a figure does not apply), so the table, CSV and JSON
are complete even for rows that are ``unavailable`` (no backend: the reason is given),
``skipped`` (would not fit in host memory, or, on CPU, the warm-up predicts a pass more than
``max_slowdown`` times the baseline's: the estimate is given) or ``failed``.
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import anndata as ad
import numpy as np
import psutil
import torch

from ispo.bench.flops import encoder_flops, mfu, mlm_head_flops, peak_flops
from ispo.bench.methods import (
    DEFAULT_BATCH_SIZES,
    REF_BATCH_SIZE,
    MethodSpec,
    Prepared,
    Unavailable,
    prepare,
    resolve_methods,
)
from ispo.embedding.embed import default_batch_tokens, embed_cells
from ispo.io.vocab import Vocab
from ispo.model.load import GeneformerModel
from ispo.provenance import cpu_info, device_name, git_commit, versions
from ispo.runtime.batching import fixed_batches, token_budget_batches
from ispo.runtime.pool import rowwise_cosine
from ispo.runtime.profiler import Profiler, synchronize
from ispo.tokens import TokenizedCells, tokenize

log = logging.getLogger(__name__)
_MIB = float(1 << 20)
GUARD_FLOOR_S = 60.0  # the CPU time guard never skips a method whose pass would take less
# the row budget is at least this many baseline passes: only a method several times slower than
# the baseline (fp16 without fp16 units) is ever shortened, never one the load made look slower
ROW_BUDGET_BASELINE_PASSES = 3.0

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
class BenchConfig:
    """Parameters of a benchmark run (recorded in the results).

    ``row_budget_s`` (CPU, every row but the baseline and compiled ones): a method whose
    warm-up predicts a pass longer than this is timed on the first cells that fit it, and its
    row says so; None: every method runs on every cell. ``max_slowdown``: see
    :func:`_check_pace`.
    """

    methods: list[str] | str | None = None
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    ref_batch_size: int = REF_BATCH_SIZE
    emb_layer: int = -1
    batch_tokens: int | None = None
    repeats: int = 3
    repeat_budget_s: float = 10.0
    warmup_cells: int = 16
    max_slowdown: float | None = 5.0
    row_budget_s: float | None = None
    memory_fraction: float = 0.6
    tokenize_repeats: int = 5


class _TooSlow(Exception):
    """The warm-up predicts a pass too slow to be worth running (see ``max_slowdown``)."""


def _check_pace(estimate: float, n_cells: int, base_rate: float, max_slowdown: float) -> None:
    """Raise :class:`_TooSlow` when a pass predicted to take ``estimate`` seconds is more than
    ``max_slowdown`` times the baseline's over the same ``n_cells`` (``base_rate`` cells/s).

    For instance fp16 autocast on a CPU without fp16 arithmetic runs 10-20x slower than fp32:
    hours, not minutes. Used on CPU only, where a first call costs little extra; on a GPU a cold
    first call (library initialisation) would make the estimate unreliable. A pass predicted
    to take under ``GUARD_FLOOR_S`` always runs: it is not worth skipping.
    """
    base = n_cells / base_rate
    if estimate > max_slowdown * base and estimate > GUARD_FLOOR_S:
        raise _TooSlow(
            f"the warm-up predicts a pass of ~{estimate:.0f} s, {estimate / base:.0f}x the "
            f"baseline's {base:.0f} s (limit --max-slowdown {max_slowdown:g}; 0 for none)"
        )


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


def _load_average() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # not on every platform
        return None


def _free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def cosine_consistency(x: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Min and mean cosine similarity between matching rows of ``x`` and ``ref``."""
    cos = rowwise_cosine(x, ref)
    return float(cos.min()), float(cos.mean())


def method_batches(spec: MethodSpec, cells: TokenizedCells, batch_tokens: int) -> list[np.ndarray]:
    """The batches ``spec`` runs (the same functions ``embed_cells`` uses)."""
    if spec.path == "fast":
        return token_budget_batches(cells.lengths, batch_tokens)
    return fixed_batches(len(cells), int(spec.batch_size))


def reference_batch_bytes(
    model: GeneformerModel, spec: MethodSpec, cells: TokenizedCells, batches: list[np.ndarray]
) -> int:
    """Rough peak activation bytes of the largest batch on the reference path.

    The MLM logits (batch x length x vocabulary) dominate; hidden states of every layer are
    kept (``output_hidden_states``); attention scores are counted as if materialised.
    """
    cfg = model.config
    el = 2 if spec.precision in ("fp16", "bf16") else 4
    worst = 0
    for idx in batches:
        b, n = len(idx), int(cells.lengths[idx].max())
        tokens = b * n
        logits = tokens * cfg.vocab_size * el
        hidden = (cfg.n_layers + 1) * tokens * cfg.hidden * 4
        scores = b * cfg.heads * n * n * 4
        inter = tokens * (cfg.intermediate + 2 * cfg.hidden) * 4
        worst = max(worst, logits + hidden + scores + inter)
    return worst


def available_bytes(dev: torch.device) -> int:
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
    return int(psutil.virtual_memory().available)


def batching_text(spec: MethodSpec, batch_tokens: int) -> str:
    if spec.path == "fast":
        return f"token budget {batch_tokens:,}, length-sorted"
    return f"{spec.batch_size} cells, input order, padded"


def time_tokenizer(
    adata: ad.AnnData, vocab: Vocab, max_input: int, repeats: int, **kw: Any
) -> tuple[dict[str, Any], TokenizedCells]:
    """A ``tokenize`` row: median seconds over ``repeats`` runs (one core, numpy)."""
    times, cells = [], None
    with Profiler(device="cpu") as prof:
        cells = tokenize(adata, vocab, max_input=max_input, **kw)  # warm-up
        prof.mark_steady()
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            cells = tokenize(adata, vocab, max_input=max_input, **kw)
            times.append(time.perf_counter() - t0)
    t = float(np.median(times))
    s = prof.stats
    row = blank_row(
        method="tokenize",
        label=f"Tokenize ({len(cells):,} cells)",
        family="tokenize",
        status="ok",
        path="tokenize",
        backend="ispo.tokenize (vectorised numpy over CSR)",
        n_cells=len(cells),
        n_tokens=int(cells.lengths.sum()),
        time_s=t,
        time_s_passes=times,
        wall_s=s.wall_s,
        cells_per_s=len(cells) / t,
        tokens_per_s=int(cells.lengths.sum()) / t,
        cpu_percent_avg=s.cpu_percent_avg,
        cpu_percent_peak=s.cpu_percent_peak,
        rss_peak_mib=s.rss_peak_bytes / _MIB,
    )
    return row, cells


def workload(
    spec: MethodSpec,
    model: GeneformerModel,
    cells: TokenizedCells,
    batch_tokens: int,
    emb_layer: int,
) -> dict[str, Any]:
    """The row's figures fixed by the cells and the batching: tokens, padding, FLOPs.

    Model FLOPs are what the embedding needs (the layers up to the embedding layer, on unpadded
    tokens); the reference path also executes the layers above it and the MLM head.
    """
    cfg = model.config
    batches = method_batches(spec, cells, batch_tokens)
    lengths = cells.lengths
    padded = int(sum(len(i) * int(lengths[i].max()) for i in batches))
    n_tokens = int(lengths.sum())
    arch = {"hidden": cfg.hidden, "intermediate": cfg.intermediate}
    useful = encoder_flops(lengths, n_layers=model.layers_for(emb_layer), **arch)
    executed = useful
    if spec.path == "baseline":
        executed = encoder_flops(lengths, n_layers=cfg.n_layers, **arch)
        executed += mlm_head_flops(lengths, hidden=cfg.hidden, vocab_size=cfg.vocab_size)
    return {
        "n_cells": len(cells),
        "n_tokens": n_tokens,
        "n_padded_tokens": padded,
        "pad_fraction": 1.0 - n_tokens / padded if padded else 0.0,
        "n_batches": len(batches),
        "model_flops": useful,
        "executed_flops": executed,
    }


def padded_flops(
    spec: MethodSpec, model: GeneformerModel, cells: TokenizedCells, batch_tokens: int
) -> float:
    """FLOPs a pass really executes, padding included: what its time is proportional to."""
    cfg = model.config
    batches = method_batches(spec, cells, batch_tokens)
    lengths = np.concatenate(
        [np.full(len(i), int(cells.lengths[i].max())) for i in batches] or [np.zeros(0)]
    )
    arch = {"hidden": cfg.hidden, "intermediate": cfg.intermediate}
    if spec.path == "fast":
        return encoder_flops(lengths, n_layers=model.layers_for(-1), **arch)
    return encoder_flops(lengths, n_layers=cfg.n_layers, **arch) + mlm_head_flops(
        lengths, hidden=cfg.hidden, vocab_size=cfg.vocab_size
    )


def _memory_skip(
    spec: MethodSpec,
    model: GeneformerModel,
    cells: TokenizedCells,
    batches: list[np.ndarray],
    row: dict[str, Any],
    config: BenchConfig,
) -> str | None:
    """Why the reference path's largest batch would not fit in host memory, or None; records
    the estimate in ``row``.

    CPU only: running out of host memory kills the process (every row is lost), while a GPU
    out-of-memory error is caught and reported in its row.
    """
    dev = model.device
    if spec.path != "baseline":  # the fast path splits a batch that runs out of memory
        return None
    need = reference_batch_bytes(model, spec, cells, batches)
    row["est_batch_mem_mib"] = need / _MIB
    have = available_bytes(dev)
    if dev.type != "cpu" or need <= config.memory_fraction * have:
        return None
    return (
        f"largest batch needs ~{need / 2**30:.1f} GiB (MLM logits "
        f"{max(len(b) for b in batches)} cells x up to {int(cells.lengths.max())} tokens x "
        f"{model.config.vocab_size:,} vocab), {have / 2**30:.1f} GiB free on {dev.type}"
    )


@dataclass
class _Run:
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


def row_budget(config: BenchConfig, n_cells: int, baseline_rate: float | None) -> float | None:
    """Seconds a row's timed pass may take before it runs on fewer cells (None: no limit):
    ``config.row_budget_s``, or ``ROW_BUDGET_BASELINE_PASSES`` baseline passes if longer."""
    budget = config.row_budget_s
    if budget and baseline_rate:
        budget = max(budget, ROW_BUDGET_BASELINE_PASSES * n_cells / baseline_rate)
    return budget


def _fit(run: _Run, cells: TokenizedCells, seconds: float, warm: TokenizedCells) -> TokenizedCells:
    """The cells the timed passes run on, from a warm-up over ``warm`` in ``seconds``.

    The pass is predicted per token (the warm-up's cells may be the longest ones). A method
    whose pass would take longer than the row budget (``config.row_budget_s``, or 3 times the
    baseline's pass if longer) runs on the first cells that fit it, at least one; its row says
    how many. The table keeps a slow method (fp16 without fp16 units) instead of skipping it.
    Then the ``max_slowdown`` guard (:func:`_check_pace`) applies.
    """
    per_token = seconds / max(int(warm.lengths.sum()), 1)
    # batching rows measure how the batch size plays out over all cells: never shortened
    budget = (
        None
        if run.spec.family == "batching"
        else row_budget(run.config, len(cells), run.baseline_rate)
    )
    if budget and per_token * cells.lengths.sum() > budget and len(cells) > 1:
        fits = np.cumsum(cells.lengths) * per_token <= budget
        keep = max(1, int(fits.sum()))
        log.info(
            "%s: a pass would take ~%.0f s: timed on %d cells",
            run.spec.name,
            per_token * cells.lengths.sum(),
            keep,
        )
        cells = cells.subset(np.arange(keep))
    if run.config.max_slowdown and run.baseline_rate is not None:
        estimate = per_token * float(cells.lengths.sum())
        _check_pace(estimate, len(cells), run.baseline_rate, run.config.max_slowdown)
    return cells


def _warm_up(run: _Run, cells: TokenizedCells, first: np.ndarray) -> TokenizedCells:
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


def _timed_passes(
    run: _Run, cells: TokenizedCells, on_pass: Callable[[str, float], None] | None
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


def _measured(run: _Run, cells: TokenizedCells, stats: Any, peak: float | None) -> dict[str, Any]:
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
        "mfu": mfu(fixed["model_flops"], t, peak),
        "cpu_percent_avg": stats.cpu_percent_avg,
        "cpu_percent_peak": stats.cpu_percent_peak,
        # CPU time per cell: on a shared machine, what the method cost whatever it waited for
        "cpu_s_per_cell": None
        if stats.cpu_percent_avg is None
        else t * stats.cpu_percent_avg / 100 / len(cells),
        "gpu_util_avg": stats.gpu_util_avg,
        "gpu_util_peak": stats.gpu_util_peak,
        "rss_peak_mib": stats.rss_peak_bytes / _MIB,
        "gpu_mem_peak_mib": _mib(stats.gpu_mem_peak_bytes),
        "gpu_mem_used_peak_mib": _mib(stats.gpu_mem_used_peak_bytes),
    }


def _mib(n_bytes: int | None) -> float | None:
    return None if n_bytes is None else n_bytes / _MIB


def method_label(spec: MethodSpec, n_cells: int, n_run: int | None = None) -> str:
    """The row title, saying where the run differs from the method's nominal setting.

    ``bs=256→16``: a batch size above the cells run (one batch of all of them);
    ``[3 of 16 cells]``: a slow method timed on fewer cells (see :func:`_fit`).
    """
    n_run = n_cells if n_run is None else n_run
    bs = spec.batch_size
    if spec.path == "baseline" and bs and bs > n_run:
        label = spec.label.replace("{bs}", f"{bs}→{n_run}")
    else:
        label = spec.title()
    return label + (f" [{n_run} of {n_cells} cells]" if n_run < n_cells else "")


def _embed_kwargs(spec: MethodSpec, config: BenchConfig, batch_tokens: int) -> dict[str, Any]:
    return {
        "method": spec.path,
        "precision": "fp32" if spec.int8 else spec.precision,
        "emb_layer": config.emb_layer,
        "batch_tokens": batch_tokens,
        "batch_size": spec.batch_size or 10,
    }


def _planned_row(
    spec: MethodSpec,
    model: GeneformerModel,
    cells: TokenizedCells,
    config: BenchConfig,
    batch_tokens: int,
    peak: float | None,
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
        peak_tflops=None if peak is None else peak / 1e12,
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
    peak = peak_flops(dev, spec.compute_dtype)
    row = _planned_row(spec, model, cells, config, batch_tokens, peak)
    reason = _memory_skip(spec, model, cells, batches, row, config)
    if reason is not None:
        row.update(status="skipped", reason=reason)
        log.warning("%s: skipped: %s", spec.name, reason)
        return row, None
    run = _Run(spec, model, config, _embed_kwargs(spec, config, batch_tokens), baseline_rate)
    emb, ran = None, cells
    try:
        with Profiler(device=dev) as prof:
            ran = _warm_up(run, cells, batches[0])
            prof.mark_steady()
            emb = _timed_passes(run, ran, on_pass)
    except Unavailable as exc:
        row.update(status="unavailable", reason=str(exc))
    except _TooSlow as exc:
        row.update(status="skipped", reason=str(exc), warmup_s=run.warmup_s)
    except torch.OutOfMemoryError as exc:
        reason = f"out of {dev.type} memory: {str(exc).splitlines()[0][:200]}"
        row.update(status="failed", reason=reason)
    if row["status"] != "ok":  # freed here, once the exception (and its frames) are gone
        log.warning("%s: %s: %s", spec.name, row["status"], row["reason"])
        run.prep = emb = None
        _free(dev)
        return row, None
    row.update(
        _measured(run, ran, prof.stats, peak), label=method_label(spec, len(cells), len(ran))
    )
    if reference is not None and emb is not None:
        row["cos_min"], row["cos_mean"] = cosine_consistency(emb, reference[: len(emb)])
    run.prep = None
    _free(dev)
    return row, emb


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
        peak = peak_flops(model.device, spec.compute_dtype)
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


def _progress_line(i: int, total: int, spec: MethodSpec, n: int, estimate: float | None) -> str:
    est = "time unknown" if estimate is None else f"~{estimate:,.0f} s"
    extra = " + compilation" if spec.compile else ""
    return f"[{i}/{total}] {spec.name}: {method_label(spec, n)} on {n} cells, {est}{extra}"


def _failed_row(spec: MethodSpec, exc: Exception) -> dict[str, Any]:
    return blank_row(
        method=spec.name,
        label=spec.title(),
        family=spec.family,
        path=spec.path,
        status="failed",
        reason=f"{type(exc).__name__}: {str(exc)[:200]}",
    )


def _update_rates(
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


def _run_methods(
    specs: list[MethodSpec],
    model: GeneformerModel,
    cells: TokenizedCells,
    config: BenchConfig,
    tracker: Any,
    on_row: Callable[[dict[str, Any]], None] | None,
    on_progress: Callable[[str], None] | None,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Every method's row, in order, the baseline first (the reference of the others)."""
    rows: list[dict[str, Any]] = []
    embeddings: dict[str, np.ndarray] = {}
    reference: np.ndarray | None = None
    baseline_rate: float | None = None
    rates: dict[str, float] = {}  # executed FLOP/s per path, for the estimates
    step = 0

    def on_pass(name: str, seconds: float) -> None:
        nonlocal step
        if tracker is not None:
            per_s = len(cells) / seconds
            tracker.log({f"{name}/pass_s": seconds, f"{name}/pass_cells_per_s": per_s}, step=step)
            step += 1

    for i, spec in enumerate(specs, 1):
        estimate = estimate_seconds(spec, model, cells, config, rates, baseline_rate)
        line = _progress_line(i, len(specs), spec, len(cells), estimate)
        log.info("benchmark: %s", line)
        if on_progress is not None:
            on_progress(line)
        try:
            row, emb = run_method(
                spec,
                model,
                cells,
                config,
                reference=reference,
                baseline_rate=baseline_rate,
                on_pass=on_pass,
            )
        except Exception as exc:  # one broken method must not lose the others' rows
            log.exception("%s failed", spec.name)
            row, emb = _failed_row(spec, exc), None
            _free(model.device)
        if spec.name == "baseline" and emb is not None:
            reference, baseline_rate = emb, row["cells_per_s"]
            row["cos_min"], row["cos_mean"] = 1.0, 1.0
        if emb is not None:
            embeddings[spec.name] = emb
            _update_rates(rates, spec, model, cells.subset(np.arange(row["n_cells"])), row, config)
        rows.append(row)
        if tracker is not None:
            tracker.log({f"{spec.name}/{k}": v for k, v in row.items()}, step=step)
            step += 1
        if on_row is not None:
            on_row(row)
    return rows, embeddings


def run_benchmark(
    adata: ad.AnnData,
    model: GeneformerModel,
    vocab: Vocab,
    config: BenchConfig | None = None,
    *,
    n_cells: int | None = None,
    data_source: str = "in-memory AnnData",
    layer: str | None = None,
    gene_key: str | None = None,
    tracker: Any = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Tokenize ``adata`` once, then measure every method on its first ``n_cells`` cells.

    The tokenizer row is timed on all of ``adata`` (pass more cells than ``n_cells`` for a
    steady-state tokenizer figure); the methods run on the first ``n_cells`` tokenized cells.
    ``on_progress`` receives one line per method before it runs, with its estimated time.
    """
    config = config or BenchConfig()
    model.check_vocab(vocab)
    specs = resolve_methods(
        config.methods, batch_sizes=config.batch_sizes, ref_batch_size=config.ref_batch_size
    )
    max_input = model.max_input(vocab)
    log.info("benchmark: tokenizing %d cells", adata.n_obs)
    tok_row, all_cells = time_tokenizer(
        adata, vocab, max_input, config.tokenize_repeats, layer=layer, gene_key=gene_key
    )
    n = len(all_cells) if n_cells is None else min(n_cells, len(all_cells))
    cells = all_cells.subset(np.arange(n))
    started = datetime.now(UTC)
    load_start = _load_average()
    rows, embeddings = _run_methods(specs, model, cells, config, tracker, on_row, on_progress)
    base = next((r for r in rows if r["method"] == "baseline" and r["status"] == "ok"), None)
    for r in rows:
        if base is not None and r["cells_per_s"] is not None:
            r["speedup"] = r["cells_per_s"] / base["cells_per_s"]
    rows.append(tok_row)
    if tracker is not None:
        tracker.log({f"tokenize/{k}": v for k, v in tok_row.items()})
    meta = _meta(model, config, specs, cells, len(all_cells), adata, vocab, data_source)
    meta["created"] = started.isoformat(timespec="seconds")
    meta["load_average"] = {"start": load_start, "end": _load_average()}
    return BenchResult(meta, rows, embeddings)


def _meta(
    model: GeneformerModel,
    config: BenchConfig,
    specs: list[MethodSpec],
    cells: TokenizedCells,
    n_tokenized: int,
    adata: ad.AnnData,
    vocab: Vocab,
    data_source: str,
) -> dict[str, Any]:
    """What the results record about how they were made (``created`` and load added after)."""
    dev, n = model.device, len(cells)
    return {
        "schema": "ispo-benchmark/1",
        "created": None,  # set by run_benchmark
        "device": device_name(dev),
        "device_type": dev.type,
        "cpu": cpu_info(),
        "threads": torch.get_num_threads(),
        "cpu_count": psutil.cpu_count(),
        # 1-minute load averages (added by run_benchmark): above the CPU count, other
        # processes competed for the cores
        "load_average": None,
        "platform": platform.platform(),
        "versions": versions(),
        "git_commit": git_commit(),
        "model": model.metadata(),
        "data": {
            "source": data_source,
            "synthetic": bool(adata.uns.get("synthetic")),
            "vocab": vocab.source,
            "n_cells": n,
            "tokens_total": int(cells.lengths.sum()),
            "tokens_mean": float(cells.lengths.mean()),
            "tokens_median": float(np.median(cells.lengths)),
            "tokens_max": int(cells.lengths.max()),
            "tokenize_cells": n_tokenized,
        },
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "methods": {s.name: s.description for s in specs},
        "layers_run": model.layers_for(config.emb_layer),
        "mfu_definition": (
            "model FLOPs of the encoder layers the embedding needs, from each "
            "cell's unpadded token count (L*(2n(4h^2+2hi)+4n^2h)), per second of "
            "the median steady-state pass, over the device's dense peak for the "
            "method's compute dtype; CPU peak from ISPO_CPU_PEAK_FLOPS when set, else "
            "cores x clock x FLOP per cycle of the vector units (cpu.peak_tflops)"
        ),
    }
