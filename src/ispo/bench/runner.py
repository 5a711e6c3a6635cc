"""Run the methods table: every method on the same tokenized cells, in one process.

The tokenizer is timed first (:mod:`ispo.bench.tokenizer`), then each method in turn, the
baseline first (the reference of the others' speedups and cosines): its progress line with an
estimate (:mod:`ispo.bench.estimate`), then its measurement (:mod:`ispo.bench.measure`), where
the work of a row (:mod:`ispo.bench.workload`) and the CPU guards (:mod:`ispo.bench.guards`)
apply.

Every row has the same keys (None where a figure does not apply), so the table, CSV and JSON
are complete even for rows that are ``unavailable`` (no backend: the reason is given),
``skipped`` (would not fit in host memory, or, on CPU, the warm-up predicts a pass more than
``max_slowdown`` times the baseline's: the estimate is given) or ``failed``.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import anndata as ad
import numpy as np
import psutil
import torch

from ispo.bench.config import BenchConfig
from ispo.bench.estimate import estimate_seconds, progress_line, update_rates
from ispo.bench.flops import device_peak
from ispo.bench.measure import free_device, run_method
from ispo.bench.methods import MethodSpec, resolve_methods
from ispo.bench.rows import BenchResult, failed_row
from ispo.bench.tokenizer import time_tokenizer
from ispo.hardware import load_average
from ispo.io.vocab import Vocab
from ispo.model.load import GeneformerModel
from ispo.peak import prepare_cpu_peaks
from ispo.provenance import cpu_info, device_name, git_commit, versions
from ispo.tokens import TokenizedCells

log = logging.getLogger(__name__)


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
        line = progress_line(i, len(specs), spec, len(cells), estimate)
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
            row, emb = failed_row(spec, exc), None
            free_device(model.device)
        if spec.name == "baseline" and emb is not None:
            reference, baseline_rate = emb, row["cells_per_s"]
            row["cos_min"], row["cos_mean"] = 1.0, 1.0
        if emb is not None:
            embeddings[spec.name] = emb
            update_rates(rates, spec, model, cells.subset(np.arange(row["n_cells"])), row, config)
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
    if model.device.type == "cpu":  # before the clock starts: the products load the CPU
        prepare_cpu_peaks(config.peak)
    max_input = model.max_input(vocab)
    log.info("benchmark: tokenizing %d cells", adata.n_obs)
    tok_row, all_cells = time_tokenizer(
        adata, vocab, max_input, config.tokenize_repeats, layer=layer, gene_key=gene_key
    )
    n = len(all_cells) if n_cells is None else min(n_cells, len(all_cells))
    cells = all_cells.subset(np.arange(n))
    started = datetime.now(UTC)
    load_start = load_average()
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
    meta["load_average"] = {"start": load_start, "end": load_average()}
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
        "cpu": cpu_info(config.peak),
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
            "method's compute dtype (mfu_peaks: each peak's value, source and how)"
        ),
        "mfu_peaks": {
            peak.dtype: peak.to_dict()
            for peak in (device_peak(dev, s.compute_dtype, config.peak) for s in specs)
        },
    }
