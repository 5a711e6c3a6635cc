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
    Unavailable,
    prepare,
    resolve_methods,
)
from ispo.embedding.embed import default_batch_tokens, embed_cells
from ispo.io.vocab import Vocab
from ispo.model.load import GeneformerModel
from ispo.provenance import cpu_info, device_name, git_commit, versions
from ispo.runtime.batching import fixed_batches, token_budget_batches
from ispo.runtime.profiler import Profiler
from ispo.tokens import TokenizedCells, tokenize

log = logging.getLogger(__name__)
_MIB = float(1 << 20)
GUARD_FLOOR_S = 60.0  # the CPU time guard never skips a method whose pass would take less

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
    """Parameters of a benchmark run (recorded in the results)."""

    methods: list[str] | str | None = None
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    ref_batch_size: int = REF_BATCH_SIZE
    emb_layer: int = -1
    batch_tokens: int | None = None
    repeats: int = 3
    repeat_budget_s: float = 10.0
    warmup_cells: int = 16
    max_slowdown: float | None = 5.0
    memory_fraction: float = 0.6
    tokenize_repeats: int = 5


class _TooSlow(Exception):
    """The warm-up predicts a pass too slow to be worth running (see ``max_slowdown``)."""


def _check_pace(
    seconds: float, done: int, total: int, base_rate: float, max_slowdown: float
) -> None:
    """Raise :class:`_TooSlow` when ``done`` cells in ``seconds`` predict a pass more than
    ``max_slowdown`` times the baseline's (``base_rate`` cells/s).

    For instance fp16 autocast on a CPU without fp16 arithmetic runs 10-20x slower than fp32:
    hours, not minutes. Used on CPU only, where a first call costs little extra; on a GPU a cold
    first call (library initialisation) would make the estimate unreliable. A pass predicted
    to take under ``GUARD_FLOOR_S`` always runs: it is not worth skipping.
    """
    estimate = seconds * total / max(done, 1)
    base = total / base_rate
    if estimate > max_slowdown * base and estimate > GUARD_FLOOR_S:
        raise _TooSlow(
            f"warm-up of {done} cells took {seconds:.0f} s: a pass would take "
            f"~{estimate:.0f} s, {estimate / base:.0f}x the baseline's {base:.0f} s "
            f"(limit --max-slowdown {max_slowdown:g}; 0 for none)"
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


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def cosine_consistency(x: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Min and mean cosine similarity between matching rows of ``x`` and ``ref``."""
    a, b = x.astype(np.float64), ref.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
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
    (for the CPU time guard, ``config.max_slowdown``).
    """
    dev = model.device
    n_run = model.layers_for(config.emb_layer)
    cfg = model.config
    batch_tokens = config.batch_tokens or default_batch_tokens(dev)
    batches = method_batches(spec, cells, batch_tokens)
    lengths = cells.lengths
    padded = int(sum(len(i) * int(lengths[i].max()) for i in batches))
    n_tokens = int(lengths.sum())
    useful = encoder_flops(
        lengths, n_layers=n_run, hidden=cfg.hidden, intermediate=cfg.intermediate
    )
    if spec.path == "baseline":  # every layer and the MLM head, on the unpadded tokens
        executed = encoder_flops(
            lengths, n_layers=cfg.n_layers, hidden=cfg.hidden, intermediate=cfg.intermediate
        )
        executed += mlm_head_flops(lengths, hidden=cfg.hidden, vocab_size=cfg.vocab_size)
    else:
        executed = useful
    peak = peak_flops(dev, spec.compute_dtype)
    row = blank_row(
        method=spec.name,
        label=spec.title(),
        family=spec.family,
        status="ok",
        path=spec.path,
        precision="int8" if spec.int8 else spec.precision,
        batching=batching_text(spec, batch_tokens),
        n_cells=len(cells),
        n_tokens=n_tokens,
        n_padded_tokens=padded,
        pad_fraction=1.0 - n_tokens / padded if padded else 0.0,
        n_batches=len(batches),
        model_flops=useful,
        executed_flops=executed,
        peak_tflops=None if peak is None else peak / 1e12,
    )
    if spec.path == "baseline":
        need = reference_batch_bytes(model, spec, cells, batches)
        row["est_batch_mem_mib"] = need / _MIB
        have = available_bytes(dev)
        # CPU only: running out of host memory kills the process (every row is lost), while a
        # GPU out-of-memory error is caught below and reported in its row
        if dev.type == "cpu" and need > config.memory_fraction * have:
            row["status"] = "skipped"
            row["reason"] = (
                f"largest batch needs ~{need / 2**30:.1f} GiB (MLM logits "
                f"{max(len(b) for b in batches)} cells x up to "
                f"{int(lengths.max())} tokens x {cfg.vocab_size:,} vocab), "
                f"{have / 2**30:.1f} GiB free on {dev.type}"
            )
            log.warning("%s: skipped: %s", spec.name, row["reason"])
            return row, None
    kwargs = dict(
        method=spec.path,
        precision="fp32" if spec.int8 else spec.precision,
        emb_layer=config.emb_layer,
        batch_tokens=batch_tokens,
        batch_size=spec.batch_size or 10,
    )
    emb, times, prep = None, [], None
    try:
        with Profiler(device=dev) as prof:
            t0 = time.perf_counter()
            prep = prepare(spec, model, n_run)
            setup = time.perf_counter() - t0
            # compiled: a full pass (it compiles per shape); else the first batch, capped so a
            # batch as large as the whole run is not paid twice on slow devices
            warm = cells if spec.compile else cells.subset(batches[0][: config.warmup_cells])
            t1 = time.perf_counter()
            # the time guard: CPU only, never the baseline (the reference) nor compiled methods
            # (their warm-up includes compiling)
            guard = (
                bool(config.max_slowdown)
                and baseline_rate is not None
                and dev.type == "cpu"
                and not spec.compile
            )
            if guard and len(warm) > 2:  # a 2-cell probe first: a hopeless method costs little
                probe = cells.subset(batches[0][:2])
                embed_cells(probe, model, net=prep.net, **kwargs)
                warmup = time.perf_counter() - t1
                _check_pace(warmup, len(probe), len(cells), baseline_rate, config.max_slowdown)
            t2 = time.perf_counter()
            try:
                embed_cells(warm, model, net=prep.net, **kwargs)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:
                if spec.compile:  # a compiler that cannot build here: say so, do not fake it
                    raise Unavailable(
                        f"torch.compile failed on {dev.type}: {type(exc).__name__}:"
                        f" {str(exc).strip().splitlines()[0][:200]}"
                    ) from exc
                raise
            _sync(dev)
            warmup = time.perf_counter() - t1
            if guard:
                _check_pace(
                    time.perf_counter() - t2,
                    len(warm),
                    len(cells),
                    baseline_rate,
                    config.max_slowdown,
                )
            prof.mark_steady()
            while True:
                _sync(dev)
                t = time.perf_counter()
                emb = embed_cells(cells, model, net=prep.net, **kwargs)
                _sync(dev)
                times.append(time.perf_counter() - t)
                if on_pass is not None:
                    on_pass(spec.name, times[-1])
                if len(times) >= config.repeats or sum(times) + times[-1] > config.repeat_budget_s:
                    break
    except Unavailable as exc:
        row.update(status="unavailable", reason=str(exc))
    except _TooSlow as exc:
        row.update(status="skipped", reason=str(exc), warmup_s=warmup)
    except torch.OutOfMemoryError as exc:
        row.update(
            status="failed", reason=f"out of {dev.type} memory: {str(exc).splitlines()[0][:200]}"
        )
    if row["status"] != "ok":  # freed here, once the exception (and its frames) are gone
        log.warning("%s: %s: %s", spec.name, row["status"], row["reason"])
        emb = prep = None
        _free(dev)
        return row, None
    s = prof.stats
    t = float(np.median(times))
    row.update(
        backend=prep.backend,
        int8_linear_layers=prep.int8_linear_layers,
        setup_s=setup,
        warmup_s=warmup,
        time_s=t,
        time_s_passes=times,
        wall_s=s.wall_s,
        cells_per_s=len(cells) / t,
        tokens_per_s=n_tokens / t,
        achieved_tflops=useful / t / 1e12,
        mfu=mfu(useful, t, peak),
        cpu_percent_avg=s.cpu_percent_avg,
        cpu_percent_peak=s.cpu_percent_peak,
        gpu_util_avg=s.gpu_util_avg,
        gpu_util_peak=s.gpu_util_peak,
        rss_peak_mib=s.rss_peak_bytes / _MIB,
        gpu_mem_peak_mib=None if s.gpu_mem_peak_bytes is None else s.gpu_mem_peak_bytes / _MIB,
        gpu_mem_used_peak_mib=None
        if s.gpu_mem_used_peak_bytes is None
        else s.gpu_mem_used_peak_bytes / _MIB,
    )
    if reference is not None and emb is not None:
        row["cos_min"], row["cos_mean"] = cosine_consistency(emb, reference)
    del prep
    _free(dev)
    return row, emb


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
) -> BenchResult:
    """Tokenize ``adata`` once, then measure every method on its first ``n_cells`` cells.

    The tokenizer row is timed on all of ``adata`` (pass more cells than ``n_cells`` for a
    steady-state tokenizer figure); the methods run on the first ``n_cells`` tokenized cells.
    """
    config = config or BenchConfig()
    model.check_vocab(vocab)
    specs = resolve_methods(
        config.methods, batch_sizes=config.batch_sizes, ref_batch_size=config.ref_batch_size
    )
    dev = model.device
    max_input = min(vocab.max_input, model.config.max_len)
    log.info("benchmark: tokenizing %d cells", adata.n_obs)
    tok_row, all_cells = time_tokenizer(
        adata, vocab, max_input, config.tokenize_repeats, layer=layer, gene_key=gene_key
    )
    n = len(all_cells) if n_cells is None else min(n_cells, len(all_cells))
    cells = all_cells.subset(np.arange(n))
    started = datetime.now(UTC)
    load_start = _load_average()
    rows: list[dict[str, Any]] = []
    embeddings: dict[str, np.ndarray] = {}
    reference: np.ndarray | None = None
    baseline_rate: float | None = None
    step = 0

    def on_pass(name: str, seconds: float) -> None:
        nonlocal step
        if tracker is not None:
            tracker.log(
                {f"{name}/pass_s": seconds, f"{name}/pass_cells_per_s": n / seconds}, step=step
            )
            step += 1

    for spec in specs:
        log.info("benchmark: %s (%s) on %d cells", spec.name, spec.title(), n)
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
            row, emb = (
                blank_row(
                    method=spec.name,
                    label=spec.title(),
                    family=spec.family,
                    path=spec.path,
                    status="failed",
                    reason=f"{type(exc).__name__}: {str(exc)[:200]}",
                ),
                None,
            )
            _free(dev)
        if spec.name == "baseline" and emb is not None:
            reference, baseline_rate = emb, row["cells_per_s"]
            row["cos_min"], row["cos_mean"] = 1.0, 1.0
        if emb is not None:
            embeddings[spec.name] = emb
        rows.append(row)
        if tracker is not None:
            tracker.log({f"{spec.name}/{k}": v for k, v in row.items()}, step=step)
            step += 1
        if on_row is not None:
            on_row(row)
    base = next((r for r in rows if r["method"] == "baseline" and r["status"] == "ok"), None)
    for r in rows:
        if base is not None and r["cells_per_s"] is not None:
            r["speedup"] = r["cells_per_s"] / base["cells_per_s"]
    rows.append(tok_row)
    if tracker is not None:
        tracker.log({f"tokenize/{k}": v for k, v in tok_row.items()}, step=step)
    meta = {
        "schema": "ispo-benchmark/1",
        "created": started.isoformat(timespec="seconds"),
        "device": device_name(dev),
        "device_type": dev.type,
        "cpu": cpu_info(),
        "threads": torch.get_num_threads(),
        "cpu_count": psutil.cpu_count(),
        # 1-minute load averages: above the CPU count, other processes competed for the cores
        "load_average": {"start": load_start, "end": _load_average()},
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
            "tokenize_cells": len(all_cells),
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
    return BenchResult(meta, rows, embeddings)
