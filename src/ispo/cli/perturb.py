"""``ispo perturb``: in-silico perturbation, and the parsing of its cell-selection flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ispo.cli.app import app
from ispo.cli.options import (
    AttentionOpt,
    BatchTokensOpt,
    CompileOpt,
    DeviceOpt,
    EmbLayerOpt,
    FilterOpt,
    GeneKeyOpt,
    Int8Opt,
    LayerOpt,
    ModelOpt,
    NoProbsOpt,
    OverwriteOpt,
    PerturbTypeOpt,
    PrecisionOpt,
    RandomOpt,
    ResumeOpt,
    SeedOpt,
    VocabOpt,
    load_for_run,
    parse_filters,
    run_settings,
)
from ispo.errors import IspoError


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
    state_embs: Annotated[
        Path | None,
        typer.Option(help="state vectors from ispo embed --states-out (else computed here)"),
    ] = None,
    emb_mode: Annotated[
        str, typer.Option(help="cell, cell_and_gene, or cls / cls_and_gene (V2)")
    ] = "cell",
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
    workers: Annotated[
        int, typer.Option(help="processes that tokenize ahead of the device (0: a thread)")
    ] = 0,
    no_probs: NoProbsOpt = False,
) -> None:
    """Perturb genes in silico; writes OUT.parquet (one row per cell and perturbation).

    A fine-tuned cell classifier's model adds prob_<class>, delta_prob_<class>, pred_class and
    orig_pred_class to every row.
    """
    from ispo.io.read import open_with_vocab
    from ispo.io.validate import check_unique_names
    from ispo.perturbation.engine import perturb as run
    from ispo.runtime import dist

    states = _cell_states(state_key, start_state, goal_state, alt_states)
    cell_filter = parse_filters(filter)
    rng = _cell_range(cell_range)
    settings = run_settings(precision, batch_tokens, attention, compile, int8, emb_layer)
    adata, voc = open_with_vocab(input, vocab)  # obs, var in memory; counts read by rows
    check_unique_names(adata.obs_names)  # results are keyed by cell id
    device = dist.init(device)  # under torchrun: join the group; shards are dealt to ranks
    mdl = load_for_run(model, voc, device, random_init, seed, settings)
    mdl = mdl.without_classifier() if no_probs else mdl
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
        state_embs=state_embs,
        workers=workers,
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


def _cell_range(text: str | None) -> tuple[int, int | None] | None:
    """``--cell-range START:STOP`` (either end may be left out)."""
    if text is None:
        return None
    try:
        a, b = text.split(":")
        return int(a or 0), int(b) if b else None
    except ValueError as exc:
        raise IspoError(f"--cell-range {text!r} is not START:STOP") from exc
