"""What a method's row computes on the cells before it runs: its batches, tokens, padding and
FLOPs (useful and executed), and whether the reference path's largest batch fits in memory."""

from __future__ import annotations

from typing import Any

import numpy as np
import psutil
import torch

from ispo.bench.config import BenchConfig
from ispo.bench.flops import encoder_flops, mlm_head_flops
from ispo.bench.methods import MethodSpec
from ispo.bench.rows import MIB
from ispo.model.load import GeneformerModel
from ispo.runtime.batching import fixed_batches, token_budget_batches
from ispo.tokens import TokenizedCells


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


def memory_skip(
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
    row["est_batch_mem_mib"] = need / MIB
    have = available_bytes(dev)
    if dev.type != "cpu" or need <= config.memory_fraction * have:
        return None
    return (
        f"largest batch needs ~{need / 2**30:.1f} GiB (MLM logits "
        f"{max(len(b) for b in batches)} cells x up to {int(cells.lengths.max())} tokens x "
        f"{model.config.vocab_size:,} vocab), {have / 2**30:.1f} GiB free on {dev.type}"
    )
