"""``ispo report``: one Markdown + HTML report from result folders (ispo.reporting)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ispo.cli.app import app
from ispo.cli.options import OverwriteOpt


@app.command()
def report(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="result folders (benchmark, evaluate, finetune, tune, perturb), perturb "
            ".parquet files or perturb-stats tables (.csv, .tsv, .parquet)"
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
