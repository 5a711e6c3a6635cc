"""``ispo bench-isp``: delete-all ISP speed, ispo against Geneformer's original loop."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ispo.cli.app import app
from ispo.cli.options import DeviceOpt, ModelOpt, OverwriteOpt, RandomOpt, SeedOpt, VocabOpt


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
