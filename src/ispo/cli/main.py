"""The ``ispo`` command line: thin wrappers over the Python API.

Every user mistake ends in one line on stderr (``error: ...``) and exit code 2, with no
traceback unless ``--debug``; outputs are written atomically, never half.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ispo.errors import IspoError
from ispo.settings import RunSettings

if TYPE_CHECKING:
    from ispo.model.load import GeneformerModel

if TYPE_CHECKING:
    pass

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Fast, exact Geneformer embeddings and in-silico perturbation. "
    "Every command also takes --config FILE (YAML of its options; flags on "
    "the command line override it) and saves the config it ran with.",
)
log = logging.getLogger("ispo")

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="checkpoint directory or preset")]
VocabOpt = Annotated[
    str | None,
    typer.Option(
        "--vocab", help="Geneformer dictionary directory, or 'demo' (default for demo data)"
    ),
]
RandomOpt = Annotated[
    bool,
    typer.Option(
        "--random-init", help="preset with seeded random weights (speed work only, not biology)"
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of random weights")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 ...")]
LayerOpt = Annotated[str | None, typer.Option("--layer", help="layer of raw counts (default X)")]
GeneKeyOpt = Annotated[str | None, typer.Option("--gene-key", help="var column of Ensembl ids")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="replace an existing output")]
# the run settings (ispo.settings.RunSettings), shared by embed, perturb and tune
PrecisionOpt = Annotated[
    str,
    typer.Option(
        help="fp32, fp16, bf16, or auto (bf16 on CUDA and on CPUs with bf16 matrix units, "
        "fp32 elsewhere)"
    ),
]
BatchTokensOpt = Annotated[int | None, typer.Option(help="token budget per batch")]
AttentionOpt = Annotated[
    str, typer.Option(help="SDPA kernel of the fast path: default, math, flash, efficient, cudnn")
]
CompileOpt = Annotated[bool, typer.Option(help="torch.compile the fast encoder")]
Int8Opt = Annotated[bool, typer.Option(help="int8 linear layers (fast path, fp32 activations)")]
EmbLayerOpt = Annotated[int, typer.Option(help="-1 penultimate (Geneformer), 0 last")]
PoolOpt = Annotated[str, typer.Option(help="mean, or cls (V2)")]
# options of one command, named here so each command reads as its list of flags
ChunkCellsOpt = Annotated[
    int, typer.Option(help="input rows embedded and saved at a time (the unit --resume skips)")
]
NoXOpt = Annotated[
    bool,
    typer.Option("--no-x", help="leave X and layers out of the output (obs, var, obsm, uns only)"),
]
PerturbTypeOpt = Annotated[str, typer.Option(help="delete, overexpress, inhibit or activate")]
FilterOpt = Annotated[
    list[str] | None,
    typer.Option("--filter", help="keep cells with obs KEY in values: KEY=v1,v2 (repeatable)"),
]
NCellsOpt = Annotated[int | None, typer.Option(help="tune on a seeded random subset of N cells")]
MemoryCapOpt = Annotated[
    float | None,
    typer.Option(help="peak memory cap in GiB (default 90% of the GPU, or of RAM on CPU)"),
]
BatchTokensListOpt = Annotated[
    list[int] | None,
    typer.Option(help="token budget candidates (repeatable; default around the device default)"),
]
PrecisionListOpt = Annotated[
    list[str] | None, typer.Option(help="precision candidates: fp32, fp16, bf16 (repeatable)")
]
AttentionListOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="SDPA backends: default, math, flash, efficient, cudnn (repeatable; default: "
        "those that run on the device)"
    ),
]
CompileSearchOpt = Annotated[
    str, typer.Option(help="torch.compile: auto (search on CUDA, off on CPU), search, on, off")
]
TimeoutOpt = Annotated[
    float | None, typer.Option(help="stop starting trials after this many seconds")
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue a stopped run")]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        help="processes that read and tokenize ahead of the device "
        "(default: the cores left after the main process; 0: a thread)"
    ),
]


def run_settings(
    precision: str,
    batch_tokens: int | None,
    attention: str,
    compile: bool,
    int8: bool,
    emb_layer: int,
    pool: str = "mean",
) -> RunSettings:
    """The :class:`~ispo.settings.RunSettings` of the shared flags (embed, perturb; checked
    here, before any input is read)."""
    return RunSettings(
        precision=precision,
        batch_tokens=batch_tokens,
        attention=attention,
        compile=compile,
        int8=int8,
        emb_layer=emb_layer,
        pool=pool,
    )


def load_for_run(
    model: str, vocab, device: str, random_init: bool, seed: int, settings
) -> GeneformerModel:
    """The model with the run's settings built in (encoder variants, ``precision auto``
    resolved once); what auto chose is printed."""
    import ispo

    mdl = ispo.load_model(
        model, vocab=vocab, device=device, random_init=random_init, seed=seed, settings=settings
    )
    if mdl.precision_note is not None:
        typer.echo(f"precision auto: {mdl.precision_note}", err=True)
    return mdl


@app.command()
def embed(
    input: Annotated[str, typer.Argument(help=".h5ad of raw counts, or demo[:N]")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output .h5ad")],
    model: ModelOpt,
    vocab: VocabOpt = None,
    random_init: RandomOpt = False,
    seed: SeedOpt = 0,
    method: Annotated[str, typer.Option(help="fast or baseline")] = "fast",
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "auto",
    emb_layer: EmbLayerOpt = -1,
    pool: PoolOpt = "mean",
    batch_tokens: BatchTokensOpt = None,
    layer: LayerOpt = None,
    gene_key: GeneKeyOpt = None,
    key_added: Annotated[str, typer.Option(help="obsm key")] = "X_geneformer",
    attention: AttentionOpt = "default",
    compile: CompileOpt = False,
    int8: Int8Opt = False,
    chunk_cells: ChunkCellsOpt = 4096,
    no_x: NoXOpt = False,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    workers: WorkersOpt = None,
) -> None:
    """Embed every cell: writes OUT.h5ad with obsm[KEY] and uns['geneformer'].

    Streams the input in chunks (peak memory does not grow with the number of cells), keeps
    finished chunks in OUT.parts/ so --resume continues a stopped run, and under
    `torchrun --nproc_per_node=N -m ispo embed ...` shares the chunks between the processes.
    """
    from ispo.config import current_params, save_run_config
    from ispo.embedding.stream import embed_file
    from ispo.io.read import open_with_vocab
    from ispo.io.write import check_output
    from ispo.runtime import dist

    check_output(out, overwrite)
    if method not in ("fast", "baseline"):
        raise IspoError(f"--method must be fast or baseline, not {method!r}")
    settings = run_settings(precision, batch_tokens, attention, compile, int8, emb_layer, pool)
    if method != "fast" and not settings.is_plain():
        raise IspoError("--attention, --compile and --int8 apply to --method fast only")
    src, voc = open_with_vocab(input, vocab)  # obs, var in memory; counts read by rows
    device = dist.init(device)  # under torchrun: join the group, one GPU per process
    mdl = load_for_run(model, voc, device, random_init, seed, settings)
    s = mdl.settings  # precision auto resolved
    res = embed_file(
        src,
        out,
        mdl,
        vocab=voc,
        method=method,
        precision=str(s.precision),
        emb_layer=s.emb_layer,
        pool_mode=str(s.pool),
        batch_tokens=s.batch_tokens,
        layer=layer,
        gene_key=gene_key,
        key_added=key_added,
        chunk_cells=chunk_cells,
        copy_x=not no_x,
        resume=resume,
        overwrite=overwrite,
        progress=dist.is_main(),
        extra_uns=None if s.is_plain() else {"fast_settings": s.variant()},
        workers=workers,
    )
    src.close()
    if res is not None:  # rank 0 (or the only process)
        save_run_config(out, current_params(), command="embed")
        typer.echo(
            f"embedded {res['n_embedded']:,} of {res['n_obs']:,} cells -> {out} "
            f"(obsm[{key_added!r}]; {res['cells_per_s'] or 0:.1f} cells/s this run"
            + (f" on {res['processes']} processes" if res["processes"] > 1 else "")
            + ")"
        )
    dist.close()


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="output .h5ad")],
    n_cells: Annotated[int, typer.Option(help="number of cells")] = 1000,
    version: Annotated[int, typer.Option(help="1 or 2: vocabulary layout")] = 1,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write the built-in SYNTHETIC sci-Plex2-like data set (use --vocab demo with it)."""
    import ispo
    from ispo.io.write import atomic_output

    adata = ispo.demo_adata(n_cells, version=version, seed=seed)
    with atomic_output(out, overwrite) as tmp:
        adata.write_h5ad(tmp)
    typer.echo(f"wrote {n_cells:,} synthetic cells -> {out}")


@app.command()
def perturb(
    input: Annotated[str, typer.Argument(help=".h5ad of raw counts, or demo[:N]")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output .parquet (+ .json metadata)")],
    model: ModelOpt,
    vocab: VocabOpt = None,
    genes: Annotated[str, typer.Option(help="'all' or G1,G2 (symbols or Ensembl ids)")] = "all",
    perturb_type: PerturbTypeOpt = "delete",
    rank_shift: Annotated[int, typer.Option(help="quartiles for inhibit/activate (1-3)")] = 1,
    anchor_gene: Annotated[str | None, typer.Option(help="gene paired with every other")] = None,
    combos: Annotated[int, typer.Option(help="1: pairs with --anchor-gene")] = 0,
    state_key: Annotated[str | None, typer.Option(help="obs column of cell states")] = None,
    start_state: Annotated[str | None, typer.Option(help="state of the cells to perturb")] = None,
    goal_state: Annotated[str | None, typer.Option(help="state to shift toward")] = None,
    alt_states: Annotated[str | None, typer.Option(help="other states, comma-separated")] = None,
    emb_mode: Annotated[str, typer.Option(help="cell, cell_and_gene, or cls (V2)")] = "cell",
    filter: FilterOpt = None,
    max_ncells: Annotated[int | None, typer.Option(help="perturb at most N cells")] = None,
    cell_range: Annotated[str | None, typer.Option(help="START:STOP of the selected cells")] = None,
    emb_layer: EmbLayerOpt = -1,
    precision: PrecisionOpt = "fp32",
    batch_tokens: BatchTokensOpt = None,
    shard_cells: Annotated[int, typer.Option(help="cells per written shard")] = 64,
    attention: AttentionOpt = "default",
    compile: CompileOpt = False,
    int8: Int8Opt = False,
    random_init: RandomOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    layer: LayerOpt = None,
    gene_key: GeneKeyOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Perturb genes in silico; writes OUT.parquet (one row per cell and perturbation)."""
    from ispo.io.read import open_with_vocab
    from ispo.io.validate import check_unique_names
    from ispo.perturbation.engine import perturb as run
    from ispo.runtime import dist

    states = _cell_states(state_key, start_state, goal_state, alt_states)
    cell_filter = _cell_filter(filter or [])
    rng = _cell_range(cell_range)
    settings = run_settings(precision, batch_tokens, attention, compile, int8, emb_layer)
    adata, voc = open_with_vocab(input, vocab)  # obs, var in memory; counts read by rows
    check_unique_names(adata.obs_names)  # results are keyed by cell id
    device = dist.init(device)  # under torchrun: join the group; shards are dealt to ranks
    mdl = load_for_run(model, voc, device, random_init, seed, settings)
    df = run(
        adata,
        mdl,  # carries the run settings: precision, batch tokens, encoder variant, layer
        genes=genes,
        perturb_type=perturb_type,
        rank_shift=rank_shift,
        anchor_gene=anchor_gene,
        combos=combos,
        cell_states=states,
        emb_mode=emb_mode,
        cell_filter=cell_filter or None,
        max_ncells=max_ncells,
        cell_range=rng,
        shard_cells=shard_cells,
        layer=layer,
        gene_key=gene_key,
        out=out,
        resume=resume,
        overwrite=overwrite,
        progress=dist.is_main(),
        load_result=False,
    )
    if dist.is_main():
        _echo_perturb(df.attrs["metadata"], out, dist.info())
    dist.close()


def _echo_perturb(meta: dict, out: Path, where) -> None:
    """The one-line outcome of ``ispo perturb``."""
    typer.echo(
        f"{meta['n_rows']:,} perturbations of {meta['n_cells_selected']:,} cells -> {out} "
        f"({meta['perturbations_per_s'] or 0:.1f} perturbations/s this run"
        + (f" on {where.world} processes" if where.active else "")
        + ")"
    )


def _cell_states(
    state_key: str | None, start: str | None, goal: str | None, alt: str | None
) -> dict | None:
    """``--state-key/--start-state/--goal-state/--alt-states`` as perturb's ``cell_states``."""
    if all(v is None for v in (state_key, start, goal)):
        return None
    if None in (state_key, start, goal):
        raise IspoError("cell states need --state-key, --start-state and --goal-state together")
    return {
        "state_key": state_key,
        "start_state": start,
        "goal_state": goal,
        "alt_states": [s for s in (alt or "").split(",") if s],
    }


def _cell_filter(items: list[str]) -> dict[str, list[str]]:
    """Repeated ``--filter KEY=v1,v2`` as ``{KEY: [v1, v2]}``."""
    cell_filter = {}
    for item in items:
        if "=" not in item:
            raise IspoError(f"--filter {item!r} is not KEY=v1,v2")
        key, values = item.split("=", 1)
        cell_filter[key] = values.split(",")
    return cell_filter


def _cell_range(text: str | None) -> tuple[int, int | None] | None:
    """``--cell-range START:STOP`` (either end may be left out)."""
    if text is None:
        return None
    try:
        a, b = text.split(":")
        return int(a or 0), int(b) if b else None
    except ValueError as exc:
        raise IspoError(f"--cell-range {text!r} is not START:STOP") from exc


# benchmark, and the reference project's `baseline` / `optimized` forms (ispo.cli.bench)
from ispo.cli.bench import register as _register_bench  # noqa: E402

_register_bench(app)


# evaluate, tune, report (ispo.evaluation, ispo.tuning, ispo.reporting.report);
# --config is handled in main()
WandbOpt = Annotated[
    bool,
    typer.Option(
        "--wandb",
        help="track with Weights & Biases "
        "(WANDB_MODE=offline works); MLflow too when "
        "MLFLOW_TRACKING_URI is set",
    ),
]
WandbProjectOpt_ = Annotated[str, typer.Option("--wandb-project", help="tracking project")]


@app.command()
def evaluate(
    input: Annotated[str, typer.Argument(help="embedded .h5ad (written by ispo embed)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="result folder to create")],
    label_key: Annotated[str, typer.Option(help="obs column with the labels")],
    control_label: Annotated[str | None, typer.Option(help="label of control cells")] = None,
    embedding: Annotated[str, typer.Option(help="obsm key of the embedding")] = "X_geneformer",
    reference: Annotated[
        Path | None,
        typer.Option(
            help="second embedding of the same cells (.h5ad): per-cell cosine, kNN overlap"
        ),
    ] = None,
    reference_key: Annotated[
        str | None, typer.Option(help="obsm key in --reference (default: --embedding)")
    ] = None,
    k: Annotated[int, typer.Option(help="neighbours for the kNN metrics")] = 10,
    test_size: Annotated[float, typer.Option(help="held-out share of the linear probe")] = 0.2,
    seed: Annotated[int, typer.Option(help="seed of the split, KMeans and subsamples")] = 0,
    wandb: WandbOpt = False,
    wandb_project: WandbProjectOpt_ = "ispo",
    overwrite: OverwriteOpt = False,
) -> None:
    """Score an embedding: linear probe, geometry, consistency; metrics.json, .md and PNGs."""
    import ispo
    from ispo.config import current_params
    from ispo.io.write import check_output
    from ispo.tracking import make_tracker

    params = current_params()
    check_output(out, overwrite)
    adata = _read_embedded(input)
    with make_tracker(
        wandb=wandb, project=wandb_project, run_name=f"evaluate {Path(input).name}", config=params
    ) as tracker:
        r = ispo.evaluate(
            adata,
            label_key=label_key,
            control_label=control_label,
            embedding_key=embedding,
            reference=reference,
            reference_key=reference_key,
            k=k,
            test_size=test_size,
            seed=seed,
            out=out,
            overwrite=overwrite,
            run_config=params,
        )
        c, g = r["classification"], r["geometry"]
        tracker.summary(
            {
                **{f"classification/{m}": c[m] for m in ("accuracy", "f1_weighted", "f1_macro")},
                **{f"geometry/{m}": v for m, v in g.items()},
                **{f"consistency/{m}": v for m, v in (r["consistency"] or {}).items()},
            }
        )
        tracker.log_artifact(out, name="evaluation", type="evaluation")
    typer.echo(
        f"{r['n_cells']:,} cells, {r['n_labels']} labels: accuracy {c['accuracy']:.3f}, "
        f"F1 macro {c['f1_macro']:.3f}, silhouette {g['silhouette']:.3f}, kNN label "
        f"consistency {g['knn_label_consistency']:.3f}"
        + (
            f", cosine to reference {r['consistency']['cosine_mean']:.6f}"
            if r["consistency"]
            else ""
        )
        + f" -> {out}/"
    )
    if r["random_init"]:
        typer.echo("note: random weights, these figures mean nothing biologically", err=True)


def _read_embedded(path: str):
    """An embedded .h5ad, counts left on disk (only obs, obsm and uns are needed)."""
    import anndata as ad

    p = Path(path)
    if not p.is_file():
        raise IspoError(f"input {p} does not exist: pass an .h5ad written by ispo embed")
    try:
        return ad.read_h5ad(p, backed="r")
    except Exception as exc:
        raise IspoError(
            f"cannot read {p} as .h5ad ({type(exc).__name__}): pass an .h5ad written by ispo embed"
        ) from exc


@app.command()
def tune(
    data: Annotated[str, typer.Option("--data", help=".h5ad of raw counts, or demo[:N]")],
    out: Annotated[Path, typer.Option("--out", "-o", help="study folder (resumed if present)")],
    model: ModelOpt,
    vocab: VocabOpt = None,
    random_init: RandomOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    n_trials: Annotated[int, typer.Option(help="total trials (a resumed study continues)")] = 20,
    n_cells: NCellsOpt = None,
    min_cosine: Annotated[float, typer.Option(help="least mean cosine to the fp32 result")] = 0.999,
    memory_cap: MemoryCapOpt = None,
    batch_tokens: BatchTokensListOpt = None,
    precision: PrecisionListOpt = None,
    attention: AttentionListOpt = None,
    compile: CompileSearchOpt = "auto",
    int8: Annotated[str, typer.Option(help="int8 linear layers: auto, search, on, off")] = "auto",
    repeats: Annotated[int, typer.Option(help="timed full passes per trial (median)")] = 3,
    timeout: TimeoutOpt = None,
    search_seed: Annotated[int, typer.Option(help="seed of the sampler")] = 0,
    emb_layer: EmbLayerOpt = -1,
    pool: PoolOpt = "mean",
    layer: LayerOpt = None,
    gene_key: GeneKeyOpt = None,
    wandb: WandbOpt = False,
    wandb_project: WandbProjectOpt_ = "ispo",
) -> None:
    """Search batch size, precision, attention, compile, int8 for the fastest consistent setting."""
    from ispo.config import current_params
    from ispo.io.read import input_vocab, read_input
    from ispo.tokens import tokenize
    from ispo.tracking import make_tracker
    from ispo.tuning import SearchSpace, TuneOptions
    from ispo.tuning import tune as run_tune

    params = current_params()
    base = RunSettings(emb_layer=emb_layer, pool=pool)  # the searched fields are set per trial
    opts = TuneOptions(
        n_trials=n_trials,
        min_cosine=min_cosine,
        memory_cap_mib=None if memory_cap is None else memory_cap * 1024.0,
        repeats=repeats,
        seed=search_seed,
        timeout_s=timeout,
    )
    voc = input_vocab(data, vocab)
    adata = _subset(read_input(data, backed=False), n_cells, search_seed)
    mdl = load_for_run(model, voc, device, random_init, seed, None)
    cells = tokenize(adata, voc, layer=layer, gene_key=gene_key, max_input=mdl.max_input(voc))
    space = SearchSpace.for_device(
        mdl.device,
        batch_tokens=batch_tokens,
        precision=precision,
        attention=attention,
        compile=compile,
        int8=int8,
    )
    with make_tracker(
        wandb=wandb, project=wandb_project, run_name=f"tune {Path(model).name}", config=params
    ) as tracker:
        res = run_tune(
            cells,
            mdl,
            out=out,
            space=space,
            settings=base,
            options=opts,
            data_source=data,
            run_config=params,
            tracker=tracker,
        )
        tracker.log_artifact(out / "best.yaml", name="best-config", type="config")
    _echo_tune(res, min_cosine)


def _subset(adata, n_cells: int | None, seed: int):
    """A seeded random subset of ``n_cells`` cells (``ispo tune --n-cells``), in input order."""
    import numpy as np

    if n_cells is None:
        return adata
    if n_cells < 1:
        raise IspoError(f"--n-cells must be at least 1, got {n_cells}")
    if n_cells >= adata.n_obs:
        return adata
    rng = np.random.default_rng(seed)
    return adata[np.sort(rng.choice(adata.n_obs, n_cells, replace=False))].copy()


def _echo_tune(res, min_cosine: float) -> None:
    """The one-paragraph outcome of ``ispo tune``."""
    s, out = res.summary, res.out
    typer.echo(
        f"{s['n_trials']} trial{'s' * (s['n_trials'] != 1)} ({s['n_complete']} "
        f"complete, {s['n_pruned']} pruned, "
        f"{s['n_feasible']} feasible) in {out}/study.db"
    )
    if res.best is None:
        typer.echo(
            f"no setting met mean cosine >= {min_cosine} within the memory cap; see "
            f"{out}/summary.json"
        )
        return
    b = s["best"]
    speed = s["speedup_vs_default"]
    typer.echo(
        f"best: {b['settings']} -> {b['cells_per_s']:.1f} cells/s"
        + (f" ({speed:.2f}x default)" if speed else "")
        + f", cosine {b['cos_mean']:.6f}; config: {out}/best.yaml"
    )


@app.command()
def report(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="result folders (benchmark, evaluate, tune, perturb) or perturb .parquet files"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="report folder to create")],
    title: Annotated[str, typer.Option(help="report title")] = "ispo report",
    overwrite: OverwriteOpt = False,
) -> None:
    """One Markdown + HTML report (tables and plots) from result folders."""
    from ispo.config import current_params
    from ispo.reporting.report import build_report

    params = current_params()
    written = build_report(inputs, out, title=title, overwrite=overwrite, run_config=params)
    typer.echo(f"report of {len(inputs)} result(s) -> {written['markdown']} and {written['html']}")


def _stats_summary(df, fdr_alpha: float) -> str:
    """The counts a user looks at first: hits per direction, genes left untested."""
    if "toward_goal" in df.columns:
        untested = int((~df["tested"]).sum())
        return (
            f", {int(df['toward_goal'].sum()):,} toward the goal and "
            f"{int(df['away_from_goal'].sum()):,} away at FDR < {fdr_alpha}"
            + (f", {untested:,} below --min-cells not tested" if untested else "")
        )
    for col in ("significant", "Sig"):
        if col in df.columns:
            return f", {int(df[col].sum()):,} significant at FDR < {fdr_alpha}"
    for col in ("impact_component", "Impact_component"):
        if col in df.columns:
            return f", {int(df[col].sum()):,} in the impact component"
    return ""


StatsMethodOpt = Annotated[
    str,
    typer.Option(
        help="goal_state_shift test: paired (within-cell, one-sided toward/away) or "
        "geneformer (InSilicoPerturberStats, to reproduce Geneformer analyses)"
    ),
]
MinCellsOpt = Annotated[
    int, typer.Option("--min-cells", help="paired: genes seen in fewer cells are not tested")
]
ColumnsOpt = Annotated[
    str, typer.Option(help="column names: ispo, or geneformer (InSilicoPerturberStats names)")
]
VolcanoOpt = Annotated[
    bool, typer.Option(help="goal_state_shift: also write OUT.volcano.png beside OUT")
]


@app.command("perturb-stats")
def perturb_stats_cmd(
    results: Annotated[Path, typer.Argument(help="results .parquet written by ispo perturb")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output .csv, .tsv or .parquet")],
    mode: Annotated[
        str,
        typer.Option(
            help="aggregate, goal_state_shift, vs_null, mixture_model or aggregate_gene_shifts"
        ),
    ] = "aggregate",
    method: StatsMethodOpt = "paired",
    min_cells: MinCellsOpt = 10,
    columns: ColumnsOpt = "ispo",
    null: Annotated[
        Path | None, typer.Option("--null", help="vs_null: results .parquet of a null run")
    ] = None,
    goal_state: Annotated[
        str | None, typer.Option("--goal-state", help="default: the run's goal state")
    ] = None,
    alt_states: Annotated[
        str | None,
        typer.Option("--alt-states", help="comma-separated; default: the run's; '' for none"),
    ] = None,
    gene_table: Annotated[
        Path | None,
        typer.Option(
            "--gene-table", help="aggregate_gene_shifts: per-gene .parquet (cell_and_gene)"
        ),
    ] = None,
    fdr_alpha: Annotated[float, typer.Option(help="significant below this FDR")] = 0.05,
    max_background: Annotated[
        int, typer.Option(help="geneformer method: pooled background subsample size")
    ] = 100_000,
    plot: VolcanoOpt = True,
    seed: Annotated[
        int, typer.Option("--seed", help="seed of the geneformer background and of the mixture")
    ] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Per-gene statistics of a perturbation run (Geneformer's InSilicoPerturberStats modes)."""
    from ispo.io.write import check_output
    from ispo.perturbation.plots import volcano_png
    from ispo.perturbation.stats import perturb_stats, write_stats

    check_output(out, overwrite)
    png = out.with_name(f"{out.stem}.volcano.png")
    volcano = plot and mode == "goal_state_shift"
    if volcano:
        check_output(png, overwrite)
    if not results.exists():
        raise IspoError(f"results {results} do not exist: give the .parquet of ispo perturb")
    alts = None if alt_states is None else [a.strip() for a in alt_states.split(",") if a.strip()]
    df = perturb_stats(
        results,
        mode=mode,
        goal_state=goal_state,
        alt_states=alts,
        null=null,
        gene_table=gene_table,
        fdr_alpha=fdr_alpha,
        max_background=max_background,
        seed=seed,
        method=method,
        min_cells=min_cells,
        columns=columns,
    )
    write_stats(df, out)
    info = df.attrs.get("ispo_stats", {})
    what = f" on {info['value']}" if info.get("value") else ""
    how = f" ({info['method']} test)" if info.get("method") else ""
    extra = _stats_summary(df, fdr_alpha)
    typer.echo(f"{info.get('mode', mode)}{what}{how}: {len(df):,} rows{extra} -> {out}")
    if volcano:
        typer.echo(f"volcano plot -> {volcano_png(df, png)}")


@app.command("bench-isp")
def bench_isp(
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")],
    data: Annotated[str, typer.Option(help=".h5ad of raw counts, or demo[:N]")] = "demo:8",
    vocab: VocabOpt = None,
    model: ModelOpt = "gf-6L-10M-i2048",
    random_init: RandomOpt = False,
    seed: SeedOpt = 0,
    n_cells: Annotated[int, typer.Option(help="cells to perturb (the first N)")] = 2,
    precisions: Annotated[str, typer.Option(help="ispo precisions, comma-separated")] = "fp32",
    batch_tokens: Annotated[int | None, typer.Option(help="token budget per batch")] = None,
    device: DeviceOpt = "auto",
    skip_original: Annotated[bool, typer.Option(help="time ispo only")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Delete-all ISP speed: ispo vs Geneformer's original loop on the same cells."""
    import json

    import ispo
    from ispo.bench.isp import isp_speed
    from ispo.io.read import input_vocab, read_input
    from ispo.io.write import atomic_output
    from ispo.provenance import device_name, git_commit, versions

    voc = input_vocab(data, vocab)
    adata = read_input(data, backed=False)
    mdl = ispo.load_model(model, vocab=voc, device=device, random_init=random_init, seed=seed)
    res = isp_speed(
        adata,
        mdl,
        n_cells=n_cells,
        precisions=tuple(precisions.split(",")),
        batch_tokens=batch_tokens,
        with_original=not skip_original,
    )
    res.update(
        model=mdl.name,
        random_init=mdl.random_init,
        data=data,
        device=device_name(mdl.device),
        versions=versions(),
        commit=git_commit(),
    )
    lines = [
        f"# ISP delete-all speed ({res['device']})",
        "",
        f"model {mdl.name} (random_init={mdl.random_init}), data {data}, "
        f"{res['n_cells']} cells, median {res['genes_per_cell_median']:.0f} tokens",
        "",
        "| method | s | cells/s | perturbations/s | speedup | TFLOP/s | MFU | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        util = "—" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
        lines.append(
            f"| {r['method']} | {r['seconds']:.1f} | {r['cells_per_s']:.3f} | "
            f"{r['perturbations_per_s']:.1f} | {r.get('speedup_vs_original', 1):.2f} | "
            f"{r['tflop_per_s']:.3f} | {util} | "
            f"{r.get('max_abs_diff_vs_original', 0):.2e} |"
        )
    with atomic_output(out, overwrite) as tmp:
        tmp.mkdir()
        (tmp / "results.json").write_text(json.dumps(res, indent=2))
        (tmp / "results.md").write_text("\n".join(lines) + "\n")
    typer.echo("\n".join(lines))


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="warnings only")] = False,
) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: one clear line and exit 2 for user errors; tracebacks only with --debug.

    ``--config FILE`` (any command) is taken out of the command line here and its YAML becomes
    the command's defaults, so flags given on the command line override it (ispo.config).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    try:
        from ispo.config import apply_config

        args, default_map = apply_config(args, typer.main.get_command(app))
        app(args=args, prog_name="ispo", standalone_mode=False, default_map=default_map)
    except IspoError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a bug, not a user error: say so in one line
        if debug:
            raise
        if _is_usage_error(exc):  # bad option, missing argument...: click's own message
            exc.show()
            sys.exit(exc.exit_code)
        print(
            f"error: internal {type(exc).__name__}: {exc} (rerun with --debug for the "
            "traceback and report it)",
            file=sys.stderr,
        )
        sys.exit(1)


def _is_usage_error(exc: Exception) -> bool:
    """A click usage error, from Typer's bundled click (typer >= 0.20) or click itself."""
    kinds: list[type] = [getattr(typer, "TyperException", type(None))]
    try:
        import click

        kinds.append(click.ClickException)
    except ImportError:
        pass
    return isinstance(exc, tuple(kinds)) and hasattr(exc, "show")
