"""Streaming embed at scale: 200,000 synthetic cells, peak host memory and throughput.

    python benchmarks/stream_200k.py [--n-cells 200000] [--subset 256] [--workdir runs/stream]

Two measured runs of the real command (``python -m ispo embed``), each in its own process whose
peak resident memory (``ru_maxrss``) is read when it exits:

1. **full** -- all N cells, from a backed ``.h5ad`` on disk, through the whole streaming path
   (chunked read, tokenize in a background thread, embed, parts written, output assembled with
   X copied) with the gf-6L preset's width (hidden 256) but *no encoder layer* (a 1-layer
   checkpoint embedded at layer -1 runs 0 layers). The model's compute is removed so that the
   memory of the pipeline at full scale can be measured on a CPU in minutes.
2. **model** -- the random ``gf-6L-10M-i2048`` preset itself, on the first ``--subset`` cells
   generated the same way: its cells/s, and its peak memory (activations are bounded by the
   token budget, not by the number of cells).

The time of a full run with the real model is *extrapolated*: N / (cells/s of run 2) plus the
pipeline time of run 1. Peak RSS of a real full run is at most about max(run 1, run 2). The
synthetic file (~2,000 genes per cell, like ``ispo.demo_adata``) is written block by block and
kept in ``--workdir`` for reruns. Synthetic data, random weights: speed and memory only.

Measured (shared 2-core CPU VM, load average 3-8 from other jobs, torch 2.13 CPU, defaults:
4,096-row units, fp32, X copied): run 1, 200,000 cells (3.2 GiB input, 3.4 GiB output) in
1,383 s, peak RSS 1.02 GiB; run 2, random gf-6L on 256 cells at 2.2 cells/s, peak RSS
0.94 GiB; so a full 200,000-cell gf-6L run on this CPU is extrapolated at ~92,000 s (~26 h)
with peak RSS ~1 GiB. Before per-batch heap trimming and 1,024-row ranking, run 1 peaked at
3.55 GiB (glibc keeping freed batch memory mapped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

GIB = float(1 << 30)


def write_synthetic(path: Path, n_cells: int, block: int = 8192, seed: int = 0) -> float:
    """Write ``n_cells`` demo-like cells to ``path`` block by block; returns seconds."""
    from anndata.io import sparse_dataset, write_elem

    import ispo

    t0 = time.perf_counter()
    tmp = path.with_name(path.name + ".partial")
    labels, var = [], None
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        for b, start in enumerate(range(0, n_cells, block)):
            a = ispo.demo_adata(min(block, n_cells - start), seed=seed + b)
            if b == 0:
                write_elem(f, "X", a.X)
                var = a.var
            else:
                sparse_dataset(f["X"]).append(a.X)
            labels.append(a.obs["condition"].astype(str).to_numpy())
            print(f"  synthetic: {start + a.n_obs:,}/{n_cells:,} cells", end="\r", flush=True)
        obs = pd.DataFrame(
            {"condition": pd.Categorical(np.concatenate(labels))},
            index=[f"cell{i}" for i in range(n_cells)],
        )
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for name in ("obsm", "varm", "obsp", "varp", "layers"):
            write_elem(f, name, {})
        write_elem(f, "uns", {"synthetic": "ispo benchmark data: not biology"})
    os.replace(tmp, path)
    print()
    return time.perf_counter() - t0


def zero_layer_checkpoint(path: Path) -> Path:
    """gf-6L's width (hidden 256, vocab 25,426) with one layer: embedding at -1 runs none."""
    import torch
    from transformers import BertForMaskedLM

    from ispo.model.presets import preset

    cfg = preset("gf-6L-10M-i2048")
    hf = cfg.to_hf()
    hf.num_hidden_layers = 1
    torch.manual_seed(0)
    BertForMaskedLM(hf).save_pretrained(path)
    return path


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run ``cmd``; its wall time and peak RSS (from the kernel's accounting at exit)."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return {"wall_s": wall, "peak_rss_gib": usage.ru_maxrss * 1024 / GIB}


def uns_of(path: Path) -> dict:
    from anndata.io import read_elem

    with h5py.File(path, "r") as f:
        return read_elem(f["uns/geneformer"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n-cells", type=int, default=200_000)
    p.add_argument("--subset", type=int, default=256, help="cells of the real-model run")
    p.add_argument("--workdir", type=Path, default=Path("runs/stream_200k"))
    p.add_argument("--chunk-cells", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-full", action="store_true", help="only the real-model run")
    p.add_argument("--skip-model", action="store_true", help="only the full-scale run")
    args = p.parse_args(argv)
    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "ispo", "-q", "embed"]
    common = [
        "--vocab",
        "demo",
        "--device",
        args.device,
        "--chunk-cells",
        str(args.chunk_cells),
        "--overwrite",
    ]
    res: dict = {
        "n_cells": args.n_cells,
        "subset": args.subset,
        "device": args.device,
        "chunk_cells": args.chunk_cells,
        "cpus": os.cpu_count(),
    }

    if not args.skip_full:
        big = wd / f"synthetic_{args.n_cells}.h5ad"
        if not big.exists():
            print(f"writing {args.n_cells:,} synthetic cells to {big} ...")
            res["synthetic_write_s"] = write_synthetic(big, args.n_cells)
        res["input_gib"] = big.stat().st_size / GIB
        ckpt = wd / "gf6L-width-0-layers"
        if not (ckpt / "config.json").exists():
            zero_layer_checkpoint(ckpt)
        out = wd / "full.h5ad"
        print(f"run 1: {args.n_cells:,} cells, whole pipeline, 0 encoder layers ...")
        full = run_measured(
            py + [str(big), "--model", str(ckpt), "--out", str(out), *common], wd / "full.log"
        )
        full["output_gib"] = out.stat().st_size / GIB
        u = uns_of(out)
        full["n_cells_embedded"] = int(u["n_cells_embedded"])
        full["embed_loop_s"] = float(u["seconds"]["embed"])
        res["full_pipeline"] = full
        out.unlink()
        print(f"  {json.dumps(full)}")

    if not args.skip_model:
        small = wd / f"synthetic_{args.subset}.h5ad"
        if not small.exists():
            write_synthetic(small, args.subset)
        out = wd / "model.h5ad"
        print(f"run 2: {args.subset:,} cells, random gf-6L-10M-i2048, fast path fp32 ...")
        model = run_measured(
            py
            + [
                str(small),
                "--model",
                "gf-6L-10M-i2048",
                "--random-init",
                "--out",
                str(out),
                *common,
            ],
            wd / "model.log",
        )
        u = uns_of(out)
        model["embed_loop_s"] = float(u["seconds"]["embed"])
        model["cells_per_s"] = args.subset / model["embed_loop_s"]
        res["gf6L_model"] = model
        out.unlink()
        print(f"  {json.dumps(model)}")

    if "full_pipeline" in res and "gf6L_model" in res:
        f, m = res["full_pipeline"], res["gf6L_model"]
        res["extrapolated_full_s"] = args.n_cells / m["cells_per_s"] + f["wall_s"]
        res["peak_rss_gib_bound"] = max(f["peak_rss_gib"], m["peak_rss_gib"])
    (wd / "results.json").write_text(json.dumps(res, indent=2))
    print("\n| run | cells | wall s | peak RSS GiB | note |\n|---|---|---|---|---|")
    if "full_pipeline" in res:
        f = res["full_pipeline"]
        print(
            f"| full pipeline, 0 layers | {args.n_cells:,} | {f['wall_s']:.0f} | "
            f"{f['peak_rss_gib']:.2f} | measured; input {res['input_gib']:.1f} GiB, "
            f"X copied to the output |"
        )
    if "gf6L_model" in res:
        m = res["gf6L_model"]
        print(
            f"| random gf-6L fp32 | {args.subset:,} | {m['wall_s']:.0f} | "
            f"{m['peak_rss_gib']:.2f} | measured; {m['cells_per_s']:.2f} cells/s "
            f"({args.device}) |"
        )
    if "extrapolated_full_s" in res:
        print(
            f"| random gf-6L fp32 | {args.n_cells:,} | "
            f"{res['extrapolated_full_s']:.0f} | <= ~{res['peak_rss_gib_bound']:.2f} | "
            "EXTRAPOLATED time |"
        )
    print(f"\nresults -> {wd / 'results.json'}")


if __name__ == "__main__":
    main()
