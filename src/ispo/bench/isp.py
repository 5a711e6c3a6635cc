"""ISP speed: ispo's engine against a faithful reimplementation of Geneformer's original loop.

The original loop (InSilicoPerturber, ``genes_to_perturb="all"``): one cell at a time, the
perturbed token lists made by Python list surgery, forward batches of 100 padded sequences
through the full ``BertForMaskedLM`` (MLM head included) in fp32 with
``output_hidden_states=True``, then per perturbation the perturbed position removed from the
original's embeddings and the per-gene cosines averaged. Both run on the same cells in one
process, so the ratio holds on a noisy machine, and their values are compared.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import anndata as ad
import numpy as np
import torch
import torch.nn.functional as F

from ispo.bench.flops import device_peak, encoder_flops, mfu
from ispo.model.load import DTYPES, GeneformerModel
from ispo.peak import PeakMode, prepare_cpu_peaks
from ispo.perturbation.engine import perturb
from ispo.runtime.profiler import synchronize
from ispo.runtime.runner import encoder_clock
from ispo.tokens import TokenizedCells


@contextmanager
def _stopwatch(model: GeneformerModel) -> Iterator[dict[str, float]]:
    """Wall and process CPU seconds of a block. CPU time is the fair measure on a shared
    machine, where other processes take cores away for part of a run: the speedups are given
    both ways."""
    took: dict[str, float] = {}
    synchronize(model.device)
    wall, cpu = time.perf_counter(), time.process_time()
    yield took
    synchronize(model.device)
    took["seconds"] = time.perf_counter() - wall
    took["cpu_seconds"] = time.process_time() - cpu


def _compare(rows: list[dict], values: dict[str, np.ndarray]) -> None:
    """Speedups over the original loop (wall and CPU time) and value differences, in place:
    each ispo row against the original and, in another precision, against ispo's fp32."""
    ref = {k: values[k] for k in ("original", "ispo-fp32") if k in values}
    for r, key in zip(rows, values):
        for other, v in ref.items():
            if key != other and (other == "original" or r["precision"] != "fp32"):
                name = "original" if other == "original" else "fp32"
                r[f"max_abs_diff_vs_{name}"] = float(np.abs(values[key] - v).max())
    if "original" in values:
        base = rows[-1]
        for r in rows:
            r["speedup_vs_original"] = base["seconds"] / r["seconds"]
            r["cpu_speedup_vs_original"] = base["cpu_seconds"] / r["cpu_seconds"]


def original_delete_all(
    cells: TokenizedCells,
    model: GeneformerModel,
    *,
    emb_layer: int = -1,
    forward_batch_size: int = 100,
) -> list[np.ndarray]:
    """Geneformer's per-cell delete-all loop; returns each cell's per-gene values."""
    hf = model.hf_model()
    layer = model.layers_for(emb_layer)
    s = int(cells.has_cls)
    pad = model.config.pad_id
    results: list[np.ndarray] = []
    with torch.no_grad():
        for i in range(len(cells)):
            toks = cells.cell(i).tolist()
            n = len(toks) - 2 * s
            ids = torch.tensor([toks], device=model.device)
            original = hf(input_ids=ids, output_hidden_states=True).hidden_states[layer][0]
            perturbed = [toks[: s + p] + toks[s + p + 1 :] for p in range(n)]  # list surgery
            values = []
            for b in range(0, n, forward_batch_size):
                batch = perturbed[b : b + forward_batch_size]
                width = max(len(x) for x in batch)
                padded = [x + [pad] * (width - len(x)) for x in batch]
                mask = [[1] * len(x) + [0] * (width - len(x)) for x in batch]
                out = hf(
                    input_ids=torch.tensor(padded, device=model.device),
                    attention_mask=torch.tensor(mask, device=model.device),
                    output_hidden_states=True,
                ).hidden_states[layer]
                for r in range(len(batch)):
                    p = b + r
                    orig = torch.cat([original[: s + p], original[s + p + 1 :]])
                    orig_genes = orig[s : len(orig) - s]
                    pert_genes = out[r, s : s + n - 1]
                    values.append(F.cosine_similarity(orig_genes, pert_genes, dim=-1).mean().item())
            results.append(np.array(values, dtype=np.float32))
    return results


def _time_ispo(
    sub: ad.AnnData,
    cells: TokenizedCells,
    model: GeneformerModel,
    precision: str,
    batch_tokens: int | None,
) -> tuple[dict, np.ndarray]:
    """One timed delete-all run of ispo (after a one-perturbation warm-up in the same
    precision, so building the encoder in that dtype and choosing kernels are not timed): its
    row and its values."""
    last = cells.cell(int(np.argmin(cells.obs_index)))[-1 - int(cells.has_cls)]
    gene = str(model.vocab.id_of_token()[last])
    perturb(sub[:1].copy(), model, genes=[gene], precision=precision, batch_tokens=batch_tokens)
    with _stopwatch(model) as took, encoder_clock() as clock:
        df = perturb(
            sub,
            model,
            genes="all",
            perturb_type="delete",
            precision=precision,
            batch_tokens=batch_tokens,
        )
    row = {
        "method": f"ispo fast ({precision})",
        "precision": precision,
        **took,
        "cells_per_s": len(cells) / took["seconds"],
        "perturbations_per_s": len(df) / took["seconds"],
        "n_perturbations": len(df),
        "encoder_s": clock.seconds,
        "outside_encoder_share": 1 - clock.seconds / took["seconds"],
        "obs_index": df["obs_index"].to_numpy(),
    }
    return row, df["cos_sim"].to_numpy()


def _time_original(cells: TokenizedCells, model: GeneformerModel) -> tuple[dict, np.ndarray]:
    """One timed run of Geneformer's loop over ``cells`` in input order: its row (with each
    value's cell, ``obs_index``) and its values."""
    in_order = cells.subset(np.argsort(cells.obs_index))
    model.hf_model()  # built (and transformers imported) before the clock starts
    with _stopwatch(model) as took:
        orig = original_delete_all(in_order, model)
    n_pert = sum(len(v) for v in orig)
    row = {
        "method": "original loop (fp32, MLM, batch 100)",
        "precision": "fp32",
        **took,
        "cells_per_s": len(cells) / took["seconds"],
        "perturbations_per_s": n_pert / took["seconds"],
        "n_perturbations": n_pert,
        "obs_index": np.repeat(in_order.obs_index, [len(v) for v in orig]),
    }
    return row, np.concatenate(orig)


def isp_speed(
    adata: ad.AnnData,
    model: GeneformerModel,
    *,
    n_cells: int = 2,
    precisions=("fp32",),
    batch_tokens: int | None = None,
    with_original: bool = True,
    peak: PeakMode | str = PeakMode.AUTO,
) -> dict:
    """Cells/s and perturbations/s of delete-all ISP, ispo vs the original loop, same cells,
    each with its MFU: the encoder FLOPs the result needs (every original once, every
    perturbed sequence, one token shorter, once; the run layers only, no MLM head) per second,
    over the device's peak for the precision (``peak``: which CPU peak, see
    :class:`ispo.peak.PeakMode`; each row names the one it used). ispo's rows also give the
    wall time spent inside the encoder (:func:`ispo.runtime.runner.encoder_clock`) and the
    share of the run outside it (building perturbed batches, gathers, pooling, cosines,
    tables)."""
    from ispo.tokens import tokenize

    if model.device.type == "cpu":  # before any clock starts: the products load the CPU
        prepare_cpu_peaks(peak)
    vocab = model.vocab
    cells = tokenize(adata, vocab).subset(np.arange(min(n_cells, adata.n_obs)))
    sub = adata[np.sort(cells.obs_index)].copy()
    rows: list[dict] = []
    values: dict[str, np.ndarray] = {}
    peaks: dict[str, dict] = {}  # the peak of each precision, what MFU is against
    cfg = model.config
    shape = dict(n_layers=model.layers_for(-1), hidden=cfg.hidden, intermediate=cfg.intermediate)
    length_of = dict(zip(cells.obs_index.tolist(), cells.lengths.tolist()))

    def work(obs_index: np.ndarray) -> float:
        """Needed FLOPs: the originals, plus one sequence of length n-1 per perturbation."""
        pert = np.array([length_of[o] - 1 for o in obs_index.tolist()])
        return encoder_flops(cells.lengths, **shape) + encoder_flops(pert, **shape)

    def rates(row: dict, flops: float, precision: str) -> dict:
        used = device_peak(model.device, DTYPES[precision], peak)
        peaks[used.dtype] = used.to_dict()
        return {
            **row,
            "model_tflop": flops / 1e12,
            "tflop_per_s": flops / row["seconds"] / 1e12,
            "mfu": mfu(flops, row["seconds"], used.flops),
            "peak_tflops": None if used.flops is None else used.flops / 1e12,
            "peak_source": used.source,
        }

    for precision in precisions:
        row, values[f"ispo-{precision}"] = _time_ispo(sub, cells, model, precision, batch_tokens)
        rows.append(rates(row, work(row.pop("obs_index")), precision))
    if with_original:
        row, values["original"] = _time_original(cells, model)
        rows.append(rates(row, work(row.pop("obs_index")), "fp32"))
    _compare(rows, values)
    return {
        "n_cells": len(cells),
        "genes_per_cell_median": float(np.median(cells.lengths)),
        "rows": rows,
        "mfu_peaks": peaks,
    }
