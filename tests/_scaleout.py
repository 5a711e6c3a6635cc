"""Helpers of the scale-out tests (torchrun, resume, out-of-memory, bad input).

A tiny checkpoint over the demo vocabulary (so ``--vocab demo`` works from the command line) and
small ``.h5ad`` files of a few genes per cell (demo cells have ~2,000, too slow for ISP tests).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]


def tiny_checkpoint(path: Path, vocab_size: int = 25_426, seed: int = 0) -> Path:
    """A seeded random ``BertForMaskedLM`` (hidden 16, 2 layers) saved as a checkpoint dir."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    BertForMaskedLM(
        BertConfig(
            vocab_size=vocab_size,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=2048,
            hidden_act="relu",
        )
    ).eval().save_pretrained(path)
    return path


def small_adata(
    n_cells: int = 12, *, n_genes: int = 60, min_genes: int = 4, max_genes: int = 20, seed: int = 0
) -> ad.AnnData:
    """Raw integer counts over the first ``n_genes`` demo vocabulary genes, few per cell."""
    from ispo.io.demo import demo_gene_ids

    rng = np.random.default_rng(seed)
    X = np.zeros((n_cells, n_genes), dtype=np.float32)
    for i in range(n_cells):
        k = int(rng.integers(min_genes, max_genes + 1))
        cols = rng.choice(n_genes, size=k, replace=False)
        X[i, cols] = rng.choice(np.arange(1, 200), size=k, replace=False)  # no ties
    obs = pd.DataFrame(
        {"state": [("a", "b", "c")[i % 3] for i in range(n_cells)]},
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(
        {"ensembl_id": demo_gene_ids()[:n_genes]}, index=[f"SYN{i}" for i in range(n_genes)]
    )
    return ad.AnnData(sp.csr_matrix(X), obs=obs, var=var)


def write_small(path: Path, n_cells: int = 12, **kw) -> Path:
    small_adata(n_cells, **kw).write_h5ad(path)
    return path


def env(threads: int = 1) -> dict[str, str]:
    """Environment of a child ``python -m ispo``: this checkout first, fixed thread count."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), e.get("PYTHONPATH", "")])
    e["OMP_NUM_THREADS"] = str(threads)
    e.pop("WORLD_SIZE", None)
    return e


def ispo_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ispo", *args]


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "ispo",
        *args,
    ]


def run(cmd: list[str], timeout: float = 180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(), **kw)


def kill_9_when(
    cmd: list[str], child_env: dict[str, str], ready: Callable[[], bool], *, timeout: float,
    waiting_for: str, poll: float = 0.05,
) -> None:  # fmt: skip
    """Start ``cmd`` and SIGKILL it once ``ready()``; the test fails if the run ends first or
    ``ready()`` is not true within ``timeout`` seconds (``waiting_for`` names what it awaits)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env, cwd=REPO
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"run ended before it was killed: {proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {waiting_for} within {timeout:g} s")
            time.sleep(poll)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
