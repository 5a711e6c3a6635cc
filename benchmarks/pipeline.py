"""Host pipeline ceiling of ``ispo embed``: cells/s file to file with the device work removed.

    python benchmarks/pipeline.py [--n-cells 200000] [--workers 0,1,2] [--out DIR]

Runs the real streaming path (:func:`ispo.embedding.stream.embed_file`: backed read, rank-value
tokenizing in ``--workers`` processes, length-sorted token-budget batches with their padded id
matrices, Parquet parts of (cells, 256) embeddings, the output ``.h5ad``) with the device work
left out: the encoder and the pooling (which run on the GPU in a GPU run) are replaced by
:func:`host_only`, passed through ``embed_file``'s public ``encode`` argument, which builds the
same batches and returns zeros of the pooled shape (gf-6L's width, h = 256). What is left is
what the host must do per cell, so the cells/s here is the most a device can be fed by this
host. Nothing in ispo is patched.

Input: the 2,000 Kang PBMC cells of the shared data, repeated to ``--n-cells`` rows (unique
names), written once to an ``.h5ad`` (CSR, float32) in ``--workdir`` and reused. V1 dictionaries.
``X`` is not copied into the output (``--copy-x`` to include it: an HDF5 copy of the counts).

Writes ``results.json`` (``{"rows": [{"workers", "cells", "cells_per_s", "tokens_per_s",
"seconds", "cpu_s_main", "cpu_s_main_thread", "cpu_s_workers", "idle_cells_per_s_bound",
"load_average"}], "meta": {...}}``, meta from :mod:`ispo.provenance` (CPU, versions, commit,
load before and after), with the one-thread tokenizer speed (:func:`tokenizer_speed`)) and
``results.md`` in ``--out``. Workers 0 is the in-process background thread (the path before
``--workers``). On a shared, loaded machine the wall-clock cells/s says little; the CPU seconds
each part needed say more, and ``idle_cells_per_s_bound`` turns them into the most the host
could reach idle (:func:`idle_bound`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
KANG = "kang2018_pbmc_ifnb_2000.h5ad"


def host_only(cells, model, *, batch_tokens=None, on_batch=None, **_) -> np.ndarray:
    """What :func:`ispo.embedding.embed.embed_cells` does on the host, without the device
    work: length-sorted token-budget batches and their padded id matrices (on a GPU they are
    then copied to pinned memory and sent); the embeddings are zeros of the real shape."""
    from ispo.embedding.embed import default_batch_tokens
    from ispo.runtime.batching import pad_batch, token_budget_batches

    budget = batch_tokens or default_batch_tokens(torch.device("cuda"))  # a GPU run's batches
    for idx in token_budget_batches(cells.lengths, budget):
        pad_batch(cells, idx, model.config.pad_id)
        if on_batch is not None:
            on_batch(len(idx))
    return np.zeros((len(cells), model.config.hidden), dtype=np.float32)


def shapes_model(vocab, preset_name: str = "gf-6L-10M-i2048"):
    """A model of a preset's shapes (hidden 256 for gf-6L) with no weights: nothing runs it."""
    from ispo.model.load import GeneformerModel
    from ispo.model.presets import preset

    name = f"none ({preset_name} shapes)"
    return GeneformerModel(preset(preset_name), {}, name, False, None, torch.device("cpu"), vocab)


def kang_like(n_cells: int, workdir: Path, shared: Path) -> Path:
    """The Kang cells repeated to ``n_cells`` rows, written once (block by block) and reused."""
    path = workdir / f"kang_like_{n_cells}.h5ad"
    if path.exists():
        return path
    import scipy.sparse as sp

    base = ad.read_h5ad(shared / KANG)
    X = sp.csr_matrix(base.X, dtype=np.float32)
    reps = -(-n_cells // base.n_obs)
    big = sp.vstack([X] * reps, format="csr")[:n_cells]
    obs = base.obs.iloc[np.arange(n_cells) % base.n_obs]
    out = ad.AnnData(big, obs=obs.set_axis([f"c{i}" for i in range(n_cells)]), var=base.var)
    workdir.mkdir(parents=True, exist_ok=True)
    out.write_h5ad(path.with_suffix(".tmp.h5ad"))
    path.with_suffix(".tmp.h5ad").rename(path)
    return path


def n_tokens(path: Path, vocab) -> int:
    """Tokens the run ranks (every cell, truncated to the model input)."""
    import ispo

    return int(ispo.tokenize(ad.read_h5ad(path, backed="r"), vocab).lengths.sum())


def tokenizer_speed(shared: Path, repeats: int = 5) -> dict[str, dict[str, float]]:
    """``ispo.tokenize`` on one thread, cells/s (best of ``repeats``, wall and CPU time): the
    2,000 Kang cells (V1 dictionaries, ~530 genes each), and 2,000 ~2,000-gene cells (the
    built-in demo data and vocabulary)."""
    import ispo

    cases = {
        "kang_2000_v1": (ad.read_h5ad(shared / KANG), ispo.load_vocab(shared / "geneformer-v1")),
        "demo_2000_long": (ispo.demo_adata(2000), ispo.demo_vocab()),
    }
    out = {}
    for name, (adata, vocab) in cases.items():
        cells = ispo.tokenize(adata, vocab)
        wall = cpu = float("inf")
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            ispo.tokenize(adata, vocab)
            wall = min(wall, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
        out[name] = {
            "cells": adata.n_obs,
            "mean_tokens": float(cells.lengths.mean()),
            "cells_per_s_wall": adata.n_obs / wall,
            "cells_per_s_cpu": adata.n_obs / cpu,
        }
        print(name, json.dumps(out[name]), flush=True)
    return out


def run_once(path: Path, out: Path, vocab, workers: int, copy_x: bool) -> dict[str, float]:
    """Wall seconds, and CPU seconds of this process (all its threads), of its main thread
    alone, and of the workers."""
    from ispo.embedding.stream import embed_file

    if out.exists():
        out.unlink()
    model = shapes_model(vocab)
    kids0, cpu0, t0 = _children_cpu(), time.process_time(), time.perf_counter()
    thread0 = time.thread_time()
    embed_file(path, out, model, vocab=vocab, workers=workers, copy_x=copy_x, encode=host_only)
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_s_main": time.process_time() - cpu0,
        "cpu_s_main_thread": time.thread_time() - thread0,
        "cpu_s_workers": _children_cpu() - kids0,
    }


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers are joined when a run ends
    return ru.ru_utime + ru.ru_stime


def idle_bound(n: int, workers: int, cores: int, t: dict[str, float]) -> float:
    """The most cells/s this host could reach idle, from the CPU seconds each part needed.

    Each of these runs its own share one CPU second per second at most: the main thread
    (batches, parts, the output), the process's other threads together (with 0 workers the
    background thread that reads and tokenizes; torch runs one thread here), each worker
    (``workers`` share their CPU seconds), and all of it over ``cores``. The slowest of them
    bounds the rate. An upper bound: the two threads of the main process share Python's GIL,
    so parts of them may not overlap (the main process is not one thread: with 0 workers its
    CPU seconds exceed its wall seconds).
    """
    other = t["cpu_s_main"] - t["cpu_s_main_thread"]
    total = t["cpu_s_main"] + t["cpu_s_workers"]
    parts = (t["cpu_s_main_thread"], other, t["cpu_s_workers"] / max(workers, 1), total / cores)
    return n / max(parts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-cells", type=int, default=200_000)
    cores = len(os.sched_getaffinity(0))
    default = [0] + [w for w in (1, 2, 4, 8, 16, 32, 64) if w <= cores]
    p.add_argument("--workers", default=",".join(map(str, default)))
    p.add_argument("--repeats", type=int, default=2, help="runs per row; the best is kept")
    p.add_argument("--copy-x", action="store_true")
    p.add_argument("--shared", type=Path, default=SHARED)
    p.add_argument("--workdir", type=Path, default=REPO / "runs" / "pipeline")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cpu-pipeline")
    args = p.parse_args(argv)
    import ispo
    from ispo.provenance import cpu_info, git_commit, versions

    torch.set_num_threads(1)
    tokenizer = tokenizer_speed(args.shared)
    vocab = ispo.load_vocab(args.shared / "geneformer-v1")
    path = kang_like(args.n_cells, args.workdir, args.shared)
    tokens = n_tokens(path, vocab)
    rows = []
    for w in [int(x) for x in args.workers.split(",")]:
        runs = [run_once(path, args.workdir / "out.h5ad", vocab, w, args.copy_x)]
        runs += [
            run_once(path, args.workdir / "out.h5ad", vocab, w, args.copy_x)
            for _ in range(args.repeats - 1)
        ]
        t = min(runs, key=lambda r: r["seconds"])
        rows.append(
            {
                "workers": w,
                "cells": args.n_cells,
                "cells_per_s": args.n_cells / t["seconds"],
                "tokens_per_s": tokens / t["seconds"],
                **t,
                "idle_cells_per_s_bound": idle_bound(args.n_cells, w, cores, t),
                "load_average": os.getloadavg()[0],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        "what": "ispo embed file to file with a no-op encoder (host pipeline ceiling)",
        "data": f"{KANG} repeated to {args.n_cells:,} cells; V1 dictionaries",
        "tokens": tokens,
        "copy_x": args.copy_x,
        "tokenizer_one_thread": tokenizer,
        "cpu": cpu_info("nominal"),
        "cores": cores,
        "load_average_before_after": [LOAD0, os.getloadavg()],
        "versions": versions(),
        "commit": git_commit(),
        "python": sys.version.split()[0],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=2))
    (args.out / "results.md").write_text(_markdown(rows, meta))
    shutil.rmtree(args.workdir / "out.h5ad.parts", ignore_errors=True)


def _markdown(rows: list[dict], meta: dict) -> str:
    """``results.md``: the rows, the CPU, load and commit, and the tokenizer alone."""
    lines = [
        "| workers | cells | cells/s | tokens/s | s | CPU s main (main thread) "
        "| CPU s workers | idle bound cells/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['workers']} | {r['cells']:,} | {r['cells_per_s']:,.0f} | "
        f"{r['tokens_per_s']:,.0f} | {r['seconds']:.1f} | {r['cpu_s_main']:.1f} "
        f"({r['cpu_s_main_thread']:.1f}) | {r['cpu_s_workers']:.1f} | "
        f"{r['idle_cells_per_s_bound']:,.0f} |"
        for r in rows
    ]
    lines += [
        "",
        f"CPU: {meta['cpu']['model']}, {meta['cores']} cores; load average (1, 5, 15 min) "
        f"before and after: {meta['load_average_before_after']}; commit {meta['commit']}.",
        "",
    ]
    lines += [
        f"Tokenizer, one thread, best of 5, {k}: {v['cells_per_s_wall']:,.0f} cells/s wall, "
        f"{v['cells_per_s_cpu']:,.0f} cells/s of CPU time ({v['mean_tokens']:.0f} tokens/cell)."
        for k, v in meta["tokenizer_one_thread"].items()
    ]
    return "\n".join(lines) + "\n"


LOAD0 = os.getloadavg()

if __name__ == "__main__":
    main()
