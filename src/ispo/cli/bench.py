"""``ispo benchmark`` and the reference project's command forms (``baseline``, ``optimized``).

Registered on the main Typer app by :func:`register`; heavy imports happen inside the commands
so ``ispo --help`` stays fast.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from ispo.cli.options import PeakOpt
from ispo.errors import IspoError

log = logging.getLogger("ispo")

# CPU defaults: every row of the methods table within ~3 minutes on 2 cores and 24 GiB (the
# 6-layer baseline embeds ~2 Kang-length cells/s there); batch sizes above the cell count run
# one batch of every cell and their rows say so
CPU_DEFAULT_CELLS = 16
CPU_WARMUP_CELLS = 2  # a CPU has no lazy GPU initialisation to absorb: 2 cells warm it up
CPU_ROW_BUDGET_S = 20.0  # a slower method (fp16 without fp16 units) is timed on fewer cells
# the default demo data on CPU keeps this share of its counts: median ~490 genes per cell, as
# in Kang et al. 2018 PBMCs (median 514), instead of the demo's ~2,100 (cut to 2,048 tokens)
KANG_LIKE_FRACTION = 0.15
GPU_DEFAULT_CELLS = 1000  # the reference project's 1,000 cells
TOKENIZE_CELLS = 1000  # the tokenizer row is timed on at least this many cells of the data
DEFAULT_MODEL = "gf-6L-10M-i2048"

_N_HELP = (
    f"cells to embed (default {CPU_DEFAULT_CELLS} on CPU, {GPU_DEFAULT_CELLS} on GPU): "
    "the first N cells of --data, or N cells of the built-in demo"
)
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data", help=".h5ad of raw counts, or demo[:N] (default: built-in SYNTHETIC demo data)"
    ),
]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="checkpoint directory or preset")]
VocabOpt = Annotated[
    str | None,
    typer.Option("--vocab", help="Geneformer dictionary directory (needed with --data), or 'demo'"),
]
RandomOpt = Annotated[
    bool | None,
    typer.Option(
        "--random-init/--no-random-init",
        help="seeded random weights (speed work only); default: on for a preset, off for a "
        "checkpoint directory",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of random weights")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (best available), cpu, cuda ...")]
WandbProjectOpt = Annotated[
    str, typer.Option("--wandb-project", "--wandb_project", help="W&B project")
]
WandbRunOpt = Annotated[
    str | None, typer.Option("--wandb-run-name", "--wandb_run_name", help="W&B run name")
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="replace results in --out")]


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise IspoError(
            f"{what} must be comma-separated integers, e.g. 8,16,64; got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise IspoError(f"{what} must be positive integers, got {text!r}")
    return values


def _check_out(out: Path, overwrite: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise IspoError(f"--out {out} is a file: give a directory for the results")
    if (out / "results.json").exists() and not overwrite:
        raise IspoError(f"{out} already holds results: choose another --out or pass --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IspoError(f"cannot create --out {out}: {exc.strerror}") from exc
    return out


def thin_counts(adata: Any, fraction: float, seed: int = 0) -> Any:
    """``adata`` with each count kept with probability ``fraction`` (binomial thinning): the
    same cells at a lower sequencing depth, so fewer genes are detected per cell."""
    import numpy as np

    out = adata.copy()
    x = out.X.tocsr()
    rng = np.random.default_rng(seed)
    x.data = rng.binomial(x.data.astype(np.int64), fraction).astype(x.dtype)
    x.eliminate_zeros()
    out.X = x
    return out


def _load_data(
    data: str | None, vocab: str | None, n: int, tokenize_cells: int, kang_like: bool = False
):
    """(AnnData with at least n cells where available, Vocab, description).

    ``kang_like``: the default demo data thinned to Kang-like cell lengths (the CPU default).
    """
    import ispo

    src = data or "demo"
    if src == "demo" or src.startswith("demo:"):
        size = int(src.split(":", 1)[1]) if ":" in src else max(n, tokenize_cells)
        adata = ispo.demo_adata(size)
        voc = ispo.demo_vocab() if vocab in (None, "demo") else ispo.load_vocab(vocab)
        what = "ispo demo data (synthetic sci-Plex2-like negative-binomial counts"
        if kang_like and data is None:
            adata = thin_counts(adata, KANG_LIKE_FRACTION)
            what += f", {KANG_LIKE_FRACTION:.0%} of counts kept: Kang-like cell lengths"
        return adata, voc, what + ")"
    if vocab is None:
        raise IspoError(
            "--vocab DIR is required with --data: the Geneformer dictionaries of the model"
        )
    voc = ispo.demo_vocab() if vocab == "demo" else ispo.load_vocab(vocab)
    adata = ispo.read_input(src, backed=False)
    keep = max(n, tokenize_cells)
    if adata.n_obs > keep:
        adata = adata[:keep].copy()
    return adata, voc, str(src)


NCellsOpt = Annotated[int | None, typer.Option("--n-cells", help=_N_HELP)]
MethodsOpt = Annotated[
    str | None,
    typer.Option(
        "--methods",
        help="comma-separated methods or groups: baseline, batching (one row per "
        "--batch-sizes), batching-N, fp16, bf16, int8, fast, fast-bf16, fast-fp16, fast-int8, "
        "fast+compile, fast-bf16+compile; groups reference, mixed_precision, quantization, "
        "compile, all. Default: baseline,batching,fp16,bf16,int8,fast,fast-bf16,fast+compile. "
        "The fp32 baseline always runs (it is the reference)",
    ),
]
BatchSizesOpt = Annotated[
    str, typer.Option("--batch-sizes", help="cells per batch of the batching rows")
]
RefBatchSizeOpt = Annotated[
    int,
    typer.Option(
        "--ref-batch-size", help="cells per batch of fp16, bf16 and int8 (the reference: 256)"
    ),
]
BatchTokensOpt = Annotated[
    int | None, typer.Option("--batch-tokens", help="token budget per batch of the fast rows")
]
EmbLayerOpt = Annotated[int, typer.Option(help="-1 penultimate (Geneformer), 0 last")]
RepeatsOpt = Annotated[
    int,
    typer.Option(help="timed passes per method at most (median; fewer when a pass is slow)"),
]
MaxSlowdownOpt = Annotated[
    float,
    typer.Option(
        "--max-slowdown",
        help="CPU only: skip a method whose warm-up predicts a pass this many "
        "times slower than the baseline's (e.g. fp16 on a CPU without fp16 units, 10-20x); "
        "0: run everything",
    ),
]
RowBudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--row-budget",
        help="CPU: seconds a method's timed pass may take (at least 3 baseline passes); a "
        "slower method (e.g. fp16 without fp16 units) is timed on fewer cells, said in its "
        f"row. Default {CPU_ROW_BUDGET_S:g} on CPU, 0 (every cell) on GPU",
    ),
]
LayerOpt = Annotated[str | None, typer.Option("--layer", help="layer of raw counts")]
GeneKeyOpt = Annotated[str | None, typer.Option("--gene-key", help="var column of Ensembl ids")]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="results directory (default runs/bench-DATE-TIME)"),
]
SaveEmbeddingsOpt = Annotated[
    bool, typer.Option("--save-embeddings/--no-save-embeddings", help="write embeddings.npz")
]
PlotsOpt = Annotated[bool, typer.Option("--plots/--no-plots", help="write PNG plots")]
WandbOpt = Annotated[
    bool, typer.Option("--wandb", help="track with Weights & Biases (WANDB_MODE=offline works)")
]


@dataclass
class BenchRequest:
    """Everything ``ispo benchmark`` was asked for, as the CLI's options name it.

    One object instead of 24 keyword arguments: the three commands (``benchmark``, ``baseline``,
    ``optimized``) each fill the fields they have and leave the rest at the defaults.
    """

    data: str | None = None
    n_cells: int | None = None
    model: str = DEFAULT_MODEL
    vocab: str | None = None
    random_init: bool | None = None
    seed: int = 0
    methods: str | None = None
    batch_sizes: str = "8,16,64,256,512"
    ref_batch_size: int = 256
    batch_tokens: int | None = None
    emb_layer: int = -1
    device: str = "auto"
    repeats: int = 3
    max_slowdown: float = 5.0
    row_budget: float | None = None
    layer: str | None = None
    gene_key: str | None = None
    out: Path | None = None
    overwrite: bool = False
    save_embeddings: bool = True
    plots: bool = True
    wandb: bool = False
    wandb_project: str = "ispo"
    wandb_run_name: str | None = None
    tags: list[str] = field(default_factory=lambda: ["benchmark"])
    peak: str = "auto"


def _bench_config(req: BenchRequest, cpu: bool) -> tuple[Any, int]:
    """The runner's :class:`BenchConfig` and the cell count, every option checked first.

    Unknown method names fail here, before any data or model is loaded.
    """
    from ispo.bench.config import BenchConfig
    from ispo.bench.methods import resolve_methods
    from ispo.peak import PeakMode

    n = (
        req.n_cells
        if req.n_cells is not None
        else (CPU_DEFAULT_CELLS if cpu else GPU_DEFAULT_CELLS)
    )
    row_budget = req.row_budget
    if row_budget is None:
        row_budget = CPU_ROW_BUDGET_S if cpu else 0.0
    if n < 1:
        raise IspoError(f"--n-cells must be at least 1, got {n}")
    if req.repeats < 1:
        raise IspoError(f"--repeats must be at least 1, got {req.repeats}")
    if req.emb_layer not in (-1, 0):
        raise IspoError(f"--emb-layer must be -1 (penultimate) or 0 (last), not {req.emb_layer}")
    config = BenchConfig(
        methods=req.methods,
        batch_sizes=_int_list(req.batch_sizes, "--batch-sizes"),
        ref_batch_size=req.ref_batch_size,
        emb_layer=req.emb_layer,
        batch_tokens=req.batch_tokens,
        repeats=req.repeats,
        max_slowdown=req.max_slowdown if req.max_slowdown > 0 else None,
        row_budget_s=row_budget if row_budget > 0 else None,
        peak=str(PeakMode.parse(req.peak, "--peak")),
        **({"warmup_cells": CPU_WARMUP_CELLS} if cpu else {}),
    )
    specs = resolve_methods(
        config.methods, batch_sizes=config.batch_sizes, ref_batch_size=req.ref_batch_size
    )
    config.methods = [s.name for s in specs]
    return config, n


def _random_init(model: str, random_init: bool | None) -> bool:
    """Random weights by default for a preset (it has none), real ones for a checkpoint."""
    if random_init is not None:
        return random_init
    random_init = not Path(model).is_dir()
    if random_init:
        log.warning(
            "benchmark: %r is a preset without weights: using seeded random weights "
            "(speed only; pass a checkpoint directory for real weights)",
            model,
        )
    return random_init


def _log_results(tracker: Any, result: Any, files: list[Path], out: Path) -> None:
    """The table, the best method and the result files, to the tracker (W&B)."""
    from ispo.bench.tables import table_rows

    header, rows = table_rows(result)
    tracker.log_table("results", header, rows)
    base = [r for r in result.rows if r["status"] == "ok" and r["speedup"] is not None]
    best = max(base, key=lambda r: r["speedup"], default=None)
    tracker.summary(
        {
            "best_method": best and best["method"],
            "best_speedup": best and best["speedup"],
            **{f"{r['method']}/cells_per_s": r["cells_per_s"] for r in result.rows},
        }
    )
    tracker.log_artifact(
        [f for f in files if f.name != "embeddings.npz"],
        name="benchmark-results",
        type="results",
    )
    if (out / "embeddings.npz") in files:
        tracker.log_artifact(out / "embeddings.npz", name="benchmark-embeddings", type="embeddings")


def run_cli_benchmark(req: BenchRequest) -> Any:
    """Everything behind ``ispo benchmark``; returns the :class:`BenchResult`."""
    import ispo
    from ispo.bench.runner import run_benchmark
    from ispo.bench.tables import print_table, write_results
    from ispo.model.load import resolve_device
    from ispo.tracking import make_tracker

    dev = resolve_device(req.device)
    config, n = _bench_config(req, dev.type == "cpu")
    out = req.out if req.out is not None else Path("runs") / time.strftime("bench-%Y%m%d-%H%M%S")
    out = _check_out(Path(out), req.overwrite)
    adata, voc, source = _load_data(
        req.data, req.vocab, n, TOKENIZE_CELLS, kang_like=dev.type == "cpu"
    )
    random_init = _random_init(req.model, req.random_init)
    mdl = ispo.load_model(req.model, vocab=voc, device=dev, random_init=random_init, seed=req.seed)
    tracker = make_tracker(
        wandb=req.wandb,
        project=req.wandb_project,
        run_name=req.wandb_run_name or f"bench-{Path(req.model).name}-{dev.type}-n{n}",
        config={
            "model": mdl.name,
            "random_init": mdl.random_init,
            "data": source,
            "n_cells": n,
            "device": str(dev),
            "methods": config.methods,
            "batch_sizes": list(config.batch_sizes),
            "ref_batch_size": req.ref_batch_size,
        },
        dir=out,
        tags=req.tags,
    )
    with tracker:
        result = run_benchmark(
            adata,
            mdl,
            voc,
            config,
            n_cells=n,
            data_source=source,
            layer=req.layer,
            gene_key=req.gene_key,
            tracker=tracker,
            on_row=_echo_row,
            on_progress=lambda line: typer.echo(line, err=True),
        )
        files = write_results(result, out, plots=req.plots, embeddings=req.save_embeddings)
        print_table(result)
        if tracker.active:
            _log_results(tracker, result, files, out)
    typer.echo(f"results -> {out}/ (results.md, results.json, results.csv, plots)")
    return result


def _echo_row(row: dict) -> None:
    if row["status"] != "ok":
        typer.echo(f"  {row['method']}: {row['status']} ({row['reason']})", err=True)
    else:
        cos = "" if row["cos_min"] is None else f", cos min {row['cos_min']:.6f}"
        typer.echo(
            f"  {row['method']}: {row['cells_per_s']:,.2f} cells/s "
            f"({row['time_s']:.2f} s per pass{cos})",
            err=True,
        )


def benchmark(
    data: DataOpt = None,
    n_cells: NCellsOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    vocab: VocabOpt = None,
    random_init: RandomOpt = None,
    seed: SeedOpt = 0,
    methods: MethodsOpt = None,
    batch_sizes: BatchSizesOpt = "8,16,64,256,512",
    ref_batch_size: RefBatchSizeOpt = 256,
    batch_tokens: BatchTokensOpt = None,
    emb_layer: EmbLayerOpt = -1,
    device: DeviceOpt = "auto",
    repeats: RepeatsOpt = 3,
    max_slowdown: MaxSlowdownOpt = 5.0,
    row_budget: RowBudgetOpt = None,
    layer: LayerOpt = None,
    gene_key: GeneKeyOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    save_embeddings: SaveEmbeddingsOpt = True,
    plots: PlotsOpt = True,
    wandb: WandbOpt = False,
    wandb_project: WandbProjectOpt = "ispo",
    wandb_run_name: WandbRunOpt = None,
    peak: PeakOpt = "auto",
) -> None:
    """Methods table: speed, MFU, CPU/GPU %, memory and consistency of every method.

    Every method runs on the same cells in one process; results.json/csv/md and plots go to
    --out. With no options: built-in demo data, the random gf-6L preset, the best device; on
    a CPU, 16 demo cells thinned to Kang-like lengths (~3 minutes on 2 cores), on a GPU the
    reference project's 1,000 cells.
    """
    # every parameter is the BenchRequest field of the same name
    run_cli_benchmark(BenchRequest(**locals()))


_NUM_PERT_HELP = (
    "cells to embed (the reference project's 'num_perturbations' was the number "
    "of cells embedded): the first N cells of --data, or N cells of the built-in "
    f"demo. Default {CPU_DEFAULT_CELLS} on CPU, {GPU_DEFAULT_CELLS} on GPU"
)
NumPertOpt = Annotated[
    int | None,
    typer.Option("--num_perturbations", "--num-perturbations", "--n-cells", help=_NUM_PERT_HELP),
]
OutDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--output_dir", "--output-dir", "--out", help="results directory (default runs/NAME-TIME)"
    ),
]
UseWandbOpt = Annotated[
    bool, typer.Option("--use_wandb", "--wandb", help="track with Weights & Biases")
]


def baseline(
    num_perturbations: NumPertOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    data: DataOpt = None,
    vocab: VocabOpt = None,
    random_init: RandomOpt = None,
    device: DeviceOpt = "auto",
    output_dir: OutDirOpt = None,
    overwrite: OverwriteOpt = False,
    use_wandb: UseWandbOpt = False,
    wandb_project: WandbProjectOpt = "ispo",
    wandb_run_name: WandbRunOpt = None,
) -> None:
    """Reference form: the baseline (BertForMaskedLM, fp32, 10 cells per batch).

    Same as `ispo benchmark --methods baseline`; writes the same results files.
    """
    _reference_run(locals(), methods="baseline", stem="baseline", tags=["baseline"])


def _reference_run(
    options: dict[str, Any], *, methods: str, stem: str, tags: list[str], ref_batch_size: int = 256
) -> None:
    """Run a reference-form command: its options (``--num_perturbations``, ``--output_dir``,
    ``--use_wandb``) mapped onto the benchmark's; the output folder defaults to
    ``runs/STEM-DATE-TIME``."""
    o = options
    run_cli_benchmark(
        BenchRequest(
            data=o["data"],
            n_cells=o["num_perturbations"],
            model=o["model"],
            vocab=o["vocab"],
            random_init=o["random_init"],
            methods=methods,
            ref_batch_size=ref_batch_size,
            device=o["device"],
            out=o["output_dir"] or Path("runs") / time.strftime(f"{stem}-%Y%m%d-%H%M%S"),
            overwrite=o["overwrite"],
            wandb=o["use_wandb"],
            wandb_project=o["wandb_project"],
            wandb_run_name=o["wandb_run_name"],
            tags=tags,
        )
    )


_LEGACY = {
    "batching": "batching",
    "mixed_precision": "mixed_precision",
    "quantization": "int8",
    "fast": "fast",
}


def optimized(
    method: Annotated[
        str,
        typer.Option(
            "--method", help="batching, mixed_precision, quantization (int8), or fast (ispo's)"
        ),
    ],
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch_size",
            "--batch-size",
            help="cells per batch (batching, mixed_precision, quantization)",
        ),
    ] = 256,
    precision: Annotated[str, typer.Option(help="fp16 or bf16 (mixed_precision)")] = "fp16",
    num_perturbations: NumPertOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    data: DataOpt = None,
    vocab: VocabOpt = None,
    random_init: RandomOpt = None,
    device: DeviceOpt = "auto",
    output_dir: OutDirOpt = None,
    overwrite: OverwriteOpt = False,
    use_wandb: UseWandbOpt = False,
    wandb_project: WandbProjectOpt = "ispo",
    wandb_run_name: WandbRunOpt = None,
) -> None:
    """Reference form: one optimized method (batching, mixed_precision, quantization, fast).

    The fp32 baseline runs too, for speedup and consistency; writes the benchmark's files.
    """
    if method not in _LEGACY:
        raise IspoError(f"--method must be one of {', '.join(_LEGACY)}, not {method!r}")
    if precision not in ("fp16", "bf16"):
        raise IspoError(f"--precision must be fp16 or bf16, not {precision!r}")
    if batch_size < 1:
        raise IspoError(f"--batch_size must be at least 1, got {batch_size}")
    name = {"batching": f"batching-{batch_size}", "mixed_precision": precision}.get(
        method, _LEGACY[method]
    )
    _reference_run(
        locals(),
        methods=name,
        stem=f"optimized-{method}",
        tags=["optimized", method],
        ref_batch_size=batch_size,
    )


def register(app: typer.Typer) -> None:
    """Add ``benchmark``, ``baseline`` and ``optimized`` to the ``ispo`` command."""
    app.command("benchmark")(benchmark)
    app.command("baseline")(baseline)
    app.command("optimized")(optimized)
