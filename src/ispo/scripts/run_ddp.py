"""Multi-GPU embedding throughput in the reference project's form.

::

    torchrun --nproc_per_node=2 -m ispo.scripts.run_ddp --method batching --batch_size 256 \\
        --num_perturbations 1000 [--model_name gf-6L-10M-i2048] [--precision fp16]

``--num_perturbations`` is the number of cells embedded (the reference's name). The cells are
the built-in SYNTHETIC demo data and the model a preset with seeded random weights (speed work,
not biology). Each process embeds its own contiguous block of the cells on its own device
(``cuda:LOCAL_RANK``; gloo on CPU); no cell is duplicated to even out the blocks. Rank 0
prints each rank's throughput and the total (all cells over the slowest rank's time).

Methods: ``baseline`` (Hugging Face BertForMaskedLM, fp32, 10 cells per batch), ``batching``
(the same with ``--batch_size`` cells per batch), ``mixed_precision`` (batching under autocast
in ``--precision``, fp16 by default) and ``fast`` (ispo's encoder, token-budget batches, in
``--precision``). For real data and outputs use ``torchrun ... -m ispo embed``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np

METHODS = ("baseline", "batching", "mixed_precision", "fast")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ispo.scripts.run_ddp",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--method", choices=METHODS, default="batching")
    p.add_argument(
        "--batch_size",
        "--batch-size",
        type=int,
        default=256,
        help="cells per batch (baseline path)",
    )
    p.add_argument(
        "--num_perturbations",
        "--num-perturbations",
        type=int,
        default=1000,
        help="cells to embed, over all processes",
    )
    p.add_argument(
        "--model_name",
        "--model-name",
        default="gf-6L-10M-i2048",
        help="preset (random weights) or checkpoint directory",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        default=None,
        help="default fp32 (mixed_precision: fp16)",
    )
    p.add_argument(
        "--batch_tokens",
        "--batch-tokens",
        type=int,
        default=None,
        help="token budget per batch (fast)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--out", default=None, help="save all embeddings (input order) as .npy")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict | None:
    import ispo
    from ispo.embedding.embed import embed_cells
    from ispo.runtime import dist
    from ispo.runtime.profiler import synchronize

    device = dist.init(args.device)
    me = dist.info()
    precision = args.precision or ("fp16" if args.method == "mixed_precision" else "fp32")
    n = args.num_perturbations
    if n < me.world:
        raise SystemExit(f"error: --num_perturbations {n} is below the {me.world} processes")
    vocab = ispo.demo_vocab()
    model = ispo.load_model(
        args.model_name, vocab=vocab, device=device, random_init=True, seed=args.seed
    )
    rows = dist.block(n)
    adata = ispo.demo_adata(n)  # the same seeded cells on every rank; each takes its block
    cells = ispo.tokenize(adata[rows.start : rows.stop], vocab, max_input=model.max_input(vocab))
    cells.obs_index = cells.obs_index + rows.start
    path = "fast" if args.method == "fast" else "baseline"
    batch_size = 10 if args.method == "baseline" else args.batch_size
    kw = dict(
        method=path, precision=precision, batch_size=batch_size, batch_tokens=args.batch_tokens
    )
    warm = cells.subset(np.arange(min(2, len(cells))))
    embed_cells(warm, model, **kw)  # kernels, caches and allocator warm before the clock
    synchronize(model.device)
    dist.barrier()
    t0 = time.perf_counter()
    emb = embed_cells(cells, model, **kw)  # returns on the host: the device work is done
    seconds = time.perf_counter() - t0
    per_rank = dist.gather((me.rank, len(cells), seconds, str(model.device)))
    parts = dist.gather((cells.obs_index, emb)) if args.out else None
    if not me.main:
        return None
    total_s = max(s for _, _, s, _ in per_rank)
    for r, k, s, dev in per_rank:
        print(f"rank {r} ({dev}): {k:,} cells in {s:.2f} s = {k / s:.1f} cells/s", flush=True)
    print(
        f"total: {n:,} cells on {me.world} process(es) in {total_s:.2f} s = "
        f"{n / total_s:.1f} cells/s ({args.method}, {precision}, model {model.name}"
        + (", random weights" if model.random_init else "")
        + ", synthetic data)",
        flush=True,
    )
    if parts is not None:
        full = np.full((n, model.config.hidden), np.nan, dtype=np.float32)
        for idx, e in parts:
            full[idx] = e
        np.save(args.out, full)
        print(f"embeddings -> {args.out}", flush=True)
    return {"per_rank": per_rank, "cells_per_s": n / total_s, "seconds": total_s}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    from ispo.runtime import dist

    try:
        run(parse(argv))
    finally:
        dist.close()


if __name__ == "__main__":
    main()
