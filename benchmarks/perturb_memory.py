"""Peak host memory of `ispo perturb` on a large input: it must not grow with the number of cells.

    python benchmarks/perturb_memory.py [--n-cells 100000] [--genes-per-cell 1000] [--out runs/pm]

Writes a synthetic backed ``.h5ad`` (N cells, each expressing gene 0 and ``genes-per-cell - 1``
other genes of 2,000 demo-vocabulary genes, random counts), then runs the real command
(``python -m ispo perturb``, random gf-6L preset, one gene deleted in the first 64 cells) in its
own process and reads its peak resident memory (``ru_maxrss``) when it exits. The 64
perturbations take seconds; the input's size is what the memory would show if perturb held every
cell's tokens (N x genes x 4 bytes: 400 MB at the defaults). Synthetic data, random weights:
memory only. Prints and saves ``results.json``.

Measured (2-core CPU VM, torch 2.13 CPU; results in benchmarks/results/cpu-perturb-memory/):
peak RSS 0.85 GiB for 100,000 x 1,000 (805 MB h5ad) and 0.80 GiB for 10,000 x 1,000: flat.
With the commit before perturb streamed (it tokenized every cell up front), 100,000 x 1,000
peaked at 1.36 GiB against 0.81 GiB streaming (a tiny 2-layer model there), identical rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

N_GENES = 2_000


def _provenance() -> dict:
    """CPU, versions, commit and the load when the run ended (memory barely depends on load,
    the wall time does)."""
    from ispo.provenance import cpu_info, git_commit, versions

    return {
        "cpu": cpu_info("nominal"),
        "load_average_1min": os.getloadavg()[0],
        "versions": versions(),
        "commit": git_commit(),
    }


def make_input(path: Path, n_cells: int, per_cell: int, seed: int = 0) -> None:
    """The synthetic file (gene 0 expressed in every cell). Run in a child process: a process
    started by a big parent inherits the parent's peak as its own ``ru_maxrss`` (Linux keeps
    the high-water mark across fork and exec), so this one stays small."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from ispo.io.demo import demo_gene_ids

    rng = np.random.default_rng(seed)
    cols = np.empty((n_cells, per_cell), dtype=np.int32)
    others = np.arange(1, N_GENES, dtype=np.int32)
    for i in range(0, n_cells, 10_000):
        m = min(10_000, n_cells - i)
        pick = rng.random((m, N_GENES - 1)).argpartition(per_cell - 1, axis=1)[:, : per_cell - 1]
        cols[i : i + m, 0] = 0
        cols[i : i + m, 1:] = others[pick]
    cols.sort(axis=1)
    data = rng.integers(1, 50, size=cols.size).astype(np.float32)
    X = sp.csr_matrix(
        (data, cols.ravel(), np.arange(0, cols.size + 1, per_cell)), shape=(n_cells, N_GENES)
    )
    ids = demo_gene_ids()[:N_GENES]
    ad.AnnData(
        X,
        obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame({"ensembl_id": ids}, index=[f"g{i}" for i in range(N_GENES)]),
    ).write_h5ad(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=100_000)
    ap.add_argument("--genes-per-cell", type=int, default=1_000)
    ap.add_argument("--out", type=Path, default=Path("runs/perturb-memory"))
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / f"input-{args.n_cells}x{args.genes_per_cell}.h5ad"
    if args.make_only:
        make_input(data, args.n_cells, args.genes_per_cell)
        return
    subprocess.run([sys.executable, __file__, *sys.argv[1:], "--make-only"], check=True)
    gene = "ENSGSYN00000000"  # gene 0 of the demo vocabulary
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ispo",
            "-q",
            "perturb",
            str(data),
            "--vocab",
            "demo",
            "--model",
            "gf-6L-10M-i2048",
            "--random-init",
            "--genes",
            gene,
            "--max-ncells",
            "64",
            "--out",
            str(args.out / "isp.parquet"),
            "--overwrite",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # that process's own rusage (RUSAGE_CHILDREN would also count anything else this one ran)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"perturb failed: {proc.stderr.read().decode().strip()[-500:]}")
    res = {
        "n_cells": args.n_cells,
        "genes_per_cell": args.genes_per_cell,
        "input_bytes": data.stat().st_size,
        "tokens_bytes_if_held": 4 * args.n_cells * args.genes_per_cell,
        "wall_s": time.perf_counter() - t0,
        "peak_rss_gib": usage.ru_maxrss / 2**20,
        **_provenance(),
    }
    (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
