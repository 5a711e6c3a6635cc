"""One trial's measurement: throughput, agreement with fp32, peak memory of one setting.

The reference is the fp32 fast path of the same model on the same cells (and, when the search is
for ``ispo perturb``, the delete-all perturbation of a few of them), computed once per call. A
setting that cannot run here (out of memory, a kernel or compiler that does not exist) raises
:class:`Pruned`; one whose results are not finite is measured and reported as such, never as a
NaN figure.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ispo import faults
from ispo.embedding.embed import default_batch_tokens, embed_cells
from ispo.errors import IspoError
from ispo.model.load import GeneformerModel
from ispo.runtime.batching import token_budget_batches
from ispo.runtime.finite import FiniteCheck
from ispo.runtime.pool import rowwise_cosine
from ispo.runtime.profiler import Profiler, synchronize
from ispo.settings import RunSettings
from ispo.tokens import TokenizedCells

log = logging.getLogger(__name__)
_MIB = float(1 << 20)


#: how the reason of a trial pruned for lack of memory starts (such a setting is tried again)
OOM_REASON = "out of memory"


class Pruned(Exception):
    """The trial cannot run here (out of memory, missing kernel or compiler)."""


@dataclass
class Reference:
    """The fp32 results every trial is compared with: embeddings of all tuning cells and, when
    the search is for ``ispo perturb``, the delete-all values of ``isp_cells``."""

    emb: np.ndarray
    isp_cells: TokenizedCells | None = None
    isp: np.ndarray | None = None


def reference(
    cells: TokenizedCells, model: GeneformerModel, base: RunSettings, isp_cells: int
) -> Reference:
    """The fp32 fast path's embeddings (device default batch size) and, with ``isp_cells`` > 0,
    the delete-all perturbation values of that many of the shortest cells."""
    fp32 = model.with_settings(base.replace(precision="fp32"))
    emb = embed(cells, fp32)
    if isp_cells == 0:
        return Reference(emb)
    if model.vocab is None:
        raise IspoError(
            "the perturbation check (isp_cells > 0) needs the model's vocabulary: load the "
            "model with vocab=..., or set isp_cells=0"
        )
    pick = np.sort(np.argsort(cells.lengths, kind="stable")[:isp_cells])
    few = cells.subset(pick)
    return Reference(emb, few, isp_values(few, fp32))


def embed(cells: TokenizedCells, model: GeneformerModel) -> np.ndarray:
    """The fast path's embeddings of ``cells`` with the model's own settings."""
    s = model.settings
    return embed_cells(
        cells,
        model,
        method="fast",
        precision=str(s.precision),
        emb_layer=s.emb_layer,
        pool_mode=str(s.pool),
        batch_tokens=s.batch_tokens,
        layout=str(s.layout),
        finite=FiniteCheck(strict=False),  # a NaN setting is measured, then infeasible
    )


def isp_values(cells: TokenizedCells, model: GeneformerModel) -> np.ndarray:
    """Delete-all in-silico perturbation of ``cells`` with the model's settings, as
    ``ispo perturb`` runs it: ``(n_perturbations, 2)`` of ``cos_sim`` and ``cell_cos_sim``, in
    input order (cell, then gene)."""
    import anndata as ad
    import pandas as pd

    from ispo.perturbation.engine import run_shard
    from ispo.perturbation.perturber import Perturber

    vocab = model.vocab
    p = Perturber(model, vocab, perturb_type="delete", rank_shift=1, emb_mode="cell")
    p.runner.finite = FiniteCheck(strict=False)  # non-finite values are counted by agreement()
    names = pd.DataFrame(index=[str(i) for i in range(int(cells.obs_index.max()) + 1)])
    with torch.inference_mode():
        table = run_shard(
            p,
            ad.AnnData(obs=names),
            cells,
            targets=None,
            anchor=None,
            state_emb=None,
            states=None,
            id_of_token=vocab.id_of_token(),
            vocab=vocab,
        )["cells"]
    return table[["cos_sim", "cell_cos_sim"]].to_numpy(np.float64)


def measure(
    cells: TokenizedCells,
    model: GeneformerModel,
    settings: RunSettings,
    *,
    reference: Reference,
    repeats: int = 3,
    repeat_budget_s: float = 30.0,
) -> dict[str, Any]:
    """Throughput, consistency and peak memory of one setting (raises Pruned when it cannot run).

    The setting's encoder is built once, into a cache dropped after the trial. Warm-up is the
    first batch (a full pass when compiled: it compiles per shape), then up to ``repeats``
    timed full passes; throughput is from the median pass. The perturbation check, when the
    reference has one, runs after the timing (it is not timed).
    """
    dev = model.device
    times: list[float] = []
    isp = None
    faults.trial_started(settings.batch_tokens or default_batch_tokens(dev))
    try:
        trial = model.with_settings(settings, own_cache=True)
        with Profiler(device=dev) as prof:
            t0 = time.perf_counter()
            desc = trial.built_encoder(trial.layers_for(settings.emb_layer)).description
            budget = settings.batch_tokens or default_batch_tokens(dev)
            first = token_budget_batches(cells.lengths, budget)[0]
            embed(cells if settings.compile else cells.subset(first), trial)
            synchronize(dev)
            warmup = time.perf_counter() - t0
            prof.mark_steady()
            while True:
                t = time.perf_counter()
                emb = embed(cells, trial)
                synchronize(dev)
                times.append(time.perf_counter() - t)
                if len(times) >= repeats or sum(times) + times[-1] > repeat_budget_s:
                    break
        if reference.isp_cells is not None:
            isp = isp_values(reference.isp_cells, trial)
    except IspoError as exc:
        raise Pruned(str(exc)) from exc
    except Exception as exc:  # OOM, no kernel for this combination, compiler failure...
        _free(dev)
        raise Pruned(_reason(exc)) from exc
    finally:
        trial = None
    _free(dev)
    return {
        **_timing(cells, times, warmup, prof.stats, dev),
        **agreement(emb, reference.emb, isp, reference.isp),
        "backend": desc,
    }


def _timing(cells: TokenizedCells, times: list[float], warmup: float, stats, dev) -> dict:
    """A trial's speed and memory figures from its pass times and profile."""
    mem = stats.gpu_mem_peak_bytes if stats.gpu_mem_peak_bytes is not None else stats.rss_peak_bytes
    t = float(np.median(times))
    return {
        "cells_per_s": len(cells) / t,
        "tokens_per_s": int(cells.lengths.sum()) / t,
        "time_s": t,
        "time_s_passes": times,
        "warmup_s": warmup,
        "mem_peak_mib": mem / _MIB,
        "memory_kind": "gpu" if dev.type == "cuda" else "rss",
    }


def agreement(
    emb: np.ndarray, ref: np.ndarray, isp: np.ndarray | None, isp_ref: np.ndarray | None
) -> dict[str, Any]:
    """How a setting's results compare with fp32: per-cell cosine (mean and worst cell), the
    largest element-wise difference, and the largest |shift difference| of the perturbation
    check (``isp_max_shift_diff``, None without one). Non-finite results are counted in
    ``nonfinite`` (a phrase; None when all are finite) and leave the figures they would make
    NaN as None."""
    bad_cells = int((~np.isfinite(emb).all(axis=1)).sum())
    bad_isp = 0 if isp is None else int((~np.isfinite(isp).all(axis=1)).sum())
    out: dict[str, Any] = {"cos_mean": None, "cos_min": None, "max_abs_diff": None}
    if not bad_cells:
        cos = rowwise_cosine(emb, ref)
        out = {
            "cos_mean": float(cos.mean()),
            "cos_min": float(cos.min()),
            "max_abs_diff": float(np.abs(emb - ref).max()),
        }
    out["isp_max_shift_diff"] = None
    if isp is not None and not bad_isp:
        # shift = 1 - cosine, so a shift's difference is the cosine's
        out["isp_max_shift_diff"] = float(np.abs(isp - isp_ref).max())
        out["isp_n_perturbations"] = len(isp)
    parts = []
    if bad_cells:
        parts.append(f"{bad_cells} of {len(emb)} cells' embeddings")
    if bad_isp:
        parts.append(f"{bad_isp} of {len(isp)} perturbation outputs")
    out["nonfinite"] = " and ".join(parts) or None
    return out


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    if (
        isinstance(exc, (MemoryError, getattr(torch.cuda, "OutOfMemoryError", MemoryError)))
        or "out of memory" in text.lower()
        or "can't allocate memory" in text.lower()
    ):
        return f"{OOM_REASON}: {text}"
    return f"{type(exc).__name__}: {text}"


def _free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
