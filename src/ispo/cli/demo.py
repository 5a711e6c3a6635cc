"""``ispo demo``: the built-in synthetic data set, written to a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ispo.cli.app import app
from ispo.cli.options import OverwriteOpt


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="output .h5ad")],
    n_cells: Annotated[int, typer.Option(help="number of cells")] = 1000,
    version: Annotated[int, typer.Option(help="1 or 2: vocabulary layout")] = 1,
    seed: Annotated[int, typer.Option(help="seed of the synthetic counts")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write the built-in SYNTHETIC sci-Plex2-like data set (use --vocab demo with it)."""
    import ispo
    from ispo.config import current_params, save_run_config
    from ispo.io.write import atomic_output, check_output

    check_output(out, overwrite, (".h5ad",))
    adata = ispo.demo_adata(n_cells, version=version, seed=seed)
    with atomic_output(out, overwrite) as tmp:
        adata.write_h5ad(tmp)
    save_run_config(out, current_params(), command="demo")
    typer.echo(f"wrote {n_cells:,} synthetic cells -> {out}")
