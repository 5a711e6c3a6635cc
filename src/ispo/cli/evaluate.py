"""``ispo evaluate``: scores of an embedding (ispo.evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ispo.cli.app import app
from ispo.cli.options import OverwriteOpt, WandbOpt, WandbProjectOpt_
from ispo.errors import IspoError


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
        tracker.summary(_summary(r))
        tracker.log_artifact(out, name="evaluation", type="evaluation")
    _echo_evaluate(r, out)


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


def _summary(r: dict) -> dict[str, float]:
    """The headline metrics the tracker gets as its run summary."""
    c, g = r["classification"], r["geometry"]
    return {
        **{f"classification/{m}": c[m] for m in ("accuracy", "f1_weighted", "f1_macro")},
        **{f"geometry/{m}": v for m, v in g.items()},
        **{f"consistency/{m}": v for m, v in (r["consistency"] or {}).items()},
    }


def _echo_evaluate(r: dict, out: Path) -> None:
    """The one-line outcome of ``ispo evaluate`` (with the label that scores worst, which the
    pooled figures can hide), and a note when the weights were random."""
    c, g = r["classification"], r["geometry"]
    worst = min(r["per_label"], key=lambda row: row["f1"])
    sil = "n/a" if g["silhouette"] is None else f"{g['silhouette']:.3f}"
    typer.echo(
        f"{r['n_cells']:,} cells, {r['n_labels']} labels: accuracy {c['accuracy']:.3f}, "
        f"F1 macro {c['f1_macro']:.3f} (lowest: {worst['label']} {worst['f1']:.3f}), "
        f"silhouette {sil}, kNN label consistency {g['knn_label_consistency']:.3f}"
        + (
            f", cosine to reference {r['consistency']['cosine_mean']:.6f}"
            if r["consistency"]
            else ""
        )
        + f" -> {out}/"
    )
    if r["random_init"]:
        typer.echo("note: random weights, these figures mean nothing biologically", err=True)
