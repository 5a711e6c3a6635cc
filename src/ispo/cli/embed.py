"""``ispo embed``: every cell's embedding, streamed file to file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ispo.cli.app import app
from ispo.cli.options import (
    AttentionOpt,
    BatchTokensOpt,
    ChunkCellsOpt,
    CompileOpt,
    DeviceOpt,
    EmbLayerOpt,
    FilterOpt,
    GeneKeyOpt,
    Int8Opt,
    LayerOpt,
    ModelOpt,
    NoProbsOpt,
    NoXOpt,
    OverwriteOpt,
    PoolOpt,
    PrecisionOpt,
    RandomOpt,
    ResumeOpt,
    SeedOpt,
    VocabOpt,
    WorkersOpt,
    load_for_run,
    parse_filters,
    run_settings,
)
from ispo.errors import IspoError
from ispo.settings import RunSettings


@app.command()
def embed(
    input: Annotated[
        str, typer.Argument(help=".h5ad of raw counts, a tokenized dataset folder, or demo[:N]")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="output .h5ad (--emb-mode gene: or .parquet)")
    ],
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
    emb_mode: Annotated[
        str, typer.Option(help="cell (each cell; --pool mean or cls) or gene (each gene)")
    ] = "cell",
    summary_stat: Annotated[
        str,
        typer.Option(
            help="gene embeddings: mean or median over cells; --states-out: mean, median, "
            "exact_mean or exact_median (all computed exactly)"
        ),
    ] = "mean",
    filter: FilterOpt = None,
    max_ncells: Annotated[
        int | None, typer.Option(help="embed at most N cells, drawn as Geneformer does (seed 42)")
    ] = None,
    state_key: Annotated[
        str | None, typer.Option(help="obs column of cell states (with --states-out)")
    ] = None,
    states_out: Annotated[
        Path | None,
        typer.Option(help="write each state's embedding here (.safetensors) for perturb"),
    ] = None,
    plot: Annotated[
        list[str] | None,
        typer.Option(help="obs label to colour a UMAP (PCA without umap-learn) by (repeatable)"),
    ] = None,
    no_probs: NoProbsOpt = False,
) -> None:
    """Embed every cell: writes OUT.h5ad with obsm[KEY] and uns['geneformer'].

    Streams the input in chunks (peak memory does not grow with the number of cells), keeps
    finished chunks in OUT.parts/ so --resume continues a stopped run, and under
    `torchrun --nproc_per_node=N -m ispo embed ...` shares the chunks between the processes.
    --emb-mode gene writes each gene's embedding over the cells that express it instead;
    --state-key K --states-out FILE also writes each state's summary for ispo perturb.
    A fine-tuned cell classifier's model also writes obs pred_class and prob_<class>.
    """
    from ispo.config import current_params, save_run_config
    from ispo.embedding.genes import GeneRun
    from ispo.embedding.plot import plot_output
    from ispo.embedding.states import state_about, states_of_output
    from ispo.embedding.stream import embed_file
    from ispo.io.read import open_with_vocab
    from ispo.io.select import choose_rows
    from ispo.io.write import check_output
    from ispo.runtime import dist

    check_output(out, overwrite)
    settings = run_settings(precision, batch_tokens, attention, compile, int8, emb_layer, pool)
    _check_method(method, settings)
    _check_modes(emb_mode, summary_stat, state_key, states_out, overwrite, resume)
    src, voc = open_with_vocab(input, vocab)  # obs, var in memory; counts read by rows
    rows = choose_rows(src.obs, parse_filters(filter), max_ncells, per=state_key)
    _check_plot(plot or [], emb_mode, list(src.obs.columns))
    device = dist.init(device)  # under torchrun: join the group, one GPU per process
    mdl = load_for_run(model, voc, device, random_init, seed, settings)
    mdl = mdl.without_classifier() if no_probs else mdl
    s = mdl.settings  # precision auto resolved
    if emb_mode == "gene":
        run = GeneRun(summary_stat, rows, layer, gene_key, chunk_cells, workers)
        return _embed_genes(src, out, mdl, voc, run, overwrite)
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
        extra_uns=_extra_uns(s, parse_filters(filter), max_ncells, state_key),
        workers=workers,
        rows=rows,
    )
    src.close()
    if res is not None:  # rank 0 (or the only process)
        save_run_config(out, current_params(), command="embed")
        _echo_embed(res, out, key_added)
        if states_out is not None:
            about = state_about(mdl, voc, key_added)
            states = states_of_output(out, key_added, state_key, summary_stat, about)
            states.save(states_out, overwrite)
            typer.echo(f"{len(states.vectors)} state embeddings ({summary_stat}) -> {states_out}")
        for label in plot or []:
            typer.echo(f"plot -> {plot_output(out, key_added, label)}")
    dist.close()


def _check_method(method: str, settings: RunSettings) -> None:
    """``--method`` is fast or baseline, and the fast-path flags go with fast only (checked
    before any input is read)."""
    if method not in ("fast", "baseline"):
        raise IspoError(f"--method must be fast or baseline, not {method!r}")
    if method != "fast" and not settings.is_plain():
        raise IspoError("--attention, --compile and --int8 apply to --method fast only")


def _embed_genes(src, out: Path, mdl, voc, run, overwrite: bool) -> None:
    """``--emb-mode gene``: one process writes the genes' embeddings."""
    from ispo.embedding.genes import embed_genes
    from ispo.runtime import dist

    if dist.info().active:
        raise IspoError("--emb-mode gene runs in one process: run it without torchrun")
    res = embed_genes(src, out, mdl, voc, run, overwrite=overwrite, progress=True)
    src.close()
    typer.echo(f"embedded {res['n_genes']:,} genes over {res['n_embedded']:,} cells -> {out}")


def _extra_uns(s, cell_filter: dict, max_ncells: int | None, state_key: str | None) -> dict | None:
    """What ``uns["geneformer"]`` records beyond the embedding metadata: the encoder variant
    and how the cells were chosen (``selection``)."""
    extra = {} if s.is_plain() else {"fast_settings": s.variant()}
    if cell_filter or max_ncells is not None:
        extra["selection"] = {
            "filter": cell_filter,
            "max_ncells": max_ncells,
            "per": state_key,
            "seed": 42,
        }
    return extra or None


def _check_plot(labels: list[str], emb_mode: str, columns: list[str]) -> None:
    """``--plot LABEL`` colours embedded cells by an obs column (checked before any work)."""
    if labels and emb_mode != "cell":
        raise IspoError("--plot draws cells: leave it out with --emb-mode gene")
    for label in labels:
        if label not in columns:
            raise IspoError(f"--plot {label!r} is not an obs column: choose one of {columns[:10]}")


def _check_modes(
    emb_mode: str,
    stat: str,
    state_key: str | None,
    states_out: Path | None,
    overwrite: bool,
    resume: bool,
) -> None:
    """``--emb-mode``, ``--summary-stat`` and the state options go together (checked before any
    input is read)."""
    from ispo.embedding.genes import GENE_STATS
    from ispo.embedding.states import check_stat
    from ispo.io.write import check_output

    if emb_mode not in ("cell", "gene"):
        raise IspoError(f"--emb-mode must be cell or gene, not {emb_mode!r}")
    check_stat(stat)
    if (state_key is None) != (states_out is None):
        raise IspoError("state embeddings need --state-key K and --states-out FILE together")
    if emb_mode == "gene":
        if stat not in GENE_STATS:
            raise IspoError(f"gene embeddings summarise by mean or median, not {stat!r}")
        if states_out is not None or resume:
            raise IspoError("--emb-mode gene runs in one go: no --states-out, no --resume")
    if states_out is not None:
        check_output(states_out, overwrite)


def _echo_embed(res: dict, out: Path, key_added: str) -> None:
    """The one-line outcome of ``ispo embed``."""
    typer.echo(
        f"embedded {res['n_embedded']:,} of {res['n_obs']:,} cells -> {out} "
        f"(obsm[{key_added!r}]; {res['cells_per_s'] or 0:.1f} cells/s this run"
        + (f" on {res['processes']} processes" if res["processes"] > 1 else "")
        + ")"
    )
