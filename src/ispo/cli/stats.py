"""``ispo perturb-stats``: per-gene statistics of a perturbation run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ispo.cli.app import app
from ispo.cli.options import OverwriteOpt
from ispo.errors import IspoError

StatsMethodOpt = Annotated[
    str,
    typer.Option(
        help="goal_state_shift test: paired (mean shift above zero and more than the cell's "
        "other genes; one FDR over toward and away calls) or geneformer "
        "(InSilicoPerturberStats, to reproduce Geneformer analyses)"
    ),
]
MinCellsOpt = Annotated[
    int, typer.Option("--min-cells", help="paired: genes seen in fewer cells are not tested")
]
ColumnsOpt = Annotated[
    str, typer.Option(help="column names: ispo, or geneformer (InSilicoPerturberStats names)")
]
VolcanoOpt = Annotated[
    bool,
    typer.Option(help="goal_state_shift, class_prob: also write OUT.volcano.png beside OUT"),
]


@app.command("perturb-stats")
def perturb_stats_cmd(
    results: Annotated[Path, typer.Argument(help="results .parquet written by ispo perturb")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output .csv, .tsv or .parquet")],
    mode: Annotated[
        str,
        typer.Option(
            help="aggregate, goal_state_shift, vs_null, mixture_model, aggregate_gene_shifts or "
            "class_prob (a classifier checkpoint's class probabilities)"
        ),
    ] = "aggregate",
    method: StatsMethodOpt = "paired",
    min_cells: MinCellsOpt = 10,
    columns: ColumnsOpt = "ispo",
    null: Annotated[
        Path | None, typer.Option("--null", help="vs_null: results .parquet of a null run")
    ] = None,
    goal_state: Annotated[
        str | None,
        typer.Option(
            "--goal-state", help="default: the run's goal state (class_prob: the goal class)"
        ),
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
    from ispo.perturbation.plots import volcano_empty, volcano_png
    from ispo.perturbation.stats import perturb_stats, write_stats

    check_output(out, overwrite)
    png = out.with_name(f"{out.stem}.volcano.png")
    volcano = plot and mode in ("goal_state_shift", "class_prob")
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
        empty = " (no gene tested: the plot says so)" if volcano_empty(df) else ""
        typer.echo(f"volcano plot -> {volcano_png(df, png)}{empty}")


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
