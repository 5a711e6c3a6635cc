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
    run_settings,
)
from ispo.errors import IspoError
from ispo.settings import RunSettings


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
    no_probs: NoProbsOpt = False,
) -> None:
    """Embed every cell: writes OUT.h5ad with obsm[KEY] and uns['geneformer'].

    Streams the input in chunks (peak memory does not grow with the number of cells), keeps
    finished chunks in OUT.parts/ so --resume continues a stopped run, and under
    `torchrun --nproc_per_node=N -m ispo embed ...` shares the chunks between the processes.
    A fine-tuned cell classifier's model also writes obs pred_class and prob_<class>.
    """
    from ispo.config import current_params, save_run_config
    from ispo.embedding.stream import embed_file
    from ispo.io.read import open_with_vocab
    from ispo.io.write import check_output
    from ispo.runtime import dist

    check_output(out, overwrite)
    settings = run_settings(precision, batch_tokens, attention, compile, int8, emb_layer, pool)
    _check_method(method, settings)
    src, voc = open_with_vocab(input, vocab)  # obs, var in memory; counts read by rows
    device = dist.init(device)  # under torchrun: join the group, one GPU per process
    mdl = load_for_run(model, voc, device, random_init, seed, settings)
    mdl = mdl.without_classifier() if no_probs else mdl
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
        _echo_embed(res, out, key_added)
    dist.close()


def _check_method(method: str, settings: RunSettings) -> None:
    """``--method`` is fast or baseline, and the fast-path flags go with fast only (checked
    before any input is read)."""
    if method not in ("fast", "baseline"):
        raise IspoError(f"--method must be fast or baseline, not {method!r}")
    if method != "fast" and not settings.is_plain():
        raise IspoError("--attention, --compile and --int8 apply to --method fast only")


def _echo_embed(res: dict, out: Path, key_added: str) -> None:
    """The one-line outcome of ``ispo embed``."""
    typer.echo(
        f"embedded {res['n_embedded']:,} of {res['n_obs']:,} cells -> {out} "
        f"(obsm[{key_added!r}]; {res['cells_per_s'] or 0:.1f} cells/s this run"
        + (f" on {res['processes']} processes" if res["processes"] > 1 else "")
        + ")"
    )
