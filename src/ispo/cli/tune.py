"""``ispo tune``: the search for the fastest consistent run settings (ispo.tuning)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ispo.cli.app import app
from ispo.cli.options import (
    AttentionListOpt,
    BatchTokensListOpt,
    CompileSearchOpt,
    DeviceOpt,
    EmbLayerOpt,
    GeneKeyOpt,
    LayerOpt,
    MemoryCapOpt,
    ModelOpt,
    NCellsOpt,
    PoolOpt,
    PrecisionListOpt,
    RandomOpt,
    SeedOpt,
    TimeoutOpt,
    VocabOpt,
    WandbOpt,
    WandbProjectOpt_,
    load_for_run,
)
from ispo.errors import IspoError
from ispo.settings import RunSettings


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
    min_cosine_cell: Annotated[
        float, typer.Option(help="least cosine to fp32 of the worst cell")
    ] = 0.995,
    isp_cells: Annotated[
        int,
        typer.Option(
            help="tune for ispo perturb too: compare delete-all ISP on this many of the "
            "shortest cells with fp32 (0: embeddings only; best.yaml then has no perturb section)"
        ),
    ] = 0,
    isp_tolerance: Annotated[
        float, typer.Option(help="largest |shift difference| to fp32 of the ISP check")
    ] = 1e-4,
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
        min_cosine_cell=min_cosine_cell,
        isp_cells=isp_cells,
        isp_tolerance=isp_tolerance,
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
    _echo_tune(res)


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


def _echo_tune(res) -> None:
    """The one-paragraph outcome of ``ispo tune``."""
    s, out = res.summary, res.out
    copies = s["n_copies"]
    typer.echo(
        f"{s['n_measured']} trial{'s' * (s['n_measured'] != 1)} ({s['n_complete']} complete, "
        f"{s['n_pruned']} pruned, {s['n_failed']} failed; {s['n_feasible']} feasible)"
        + (f", {s['n_interrupted']} interrupted" if s["n_interrupted"] else "")
        + (f" and {copies} repeated proposal{'s' * (copies != 1)}" if copies else "")
        + f" in {out}/study.db"
    )
    if res.best is None:
        typer.echo(f"no setting met the constraints; see {out}/summary.json")
        return
    b = s["best"]
    speed = s["speedup_vs_default"]
    typer.echo(
        f"best: {b['settings']} -> {b['cells_per_s']:.1f} cells/s"
        + (f" ({speed:.2f}x default)" if speed else "")
        + f", cosine {b['cos_mean']:.6f} (worst cell {b['cos_min']:.6f}); config: {out}/best.yaml"
    )
