"""``ispo bench-isp``: delete-all ISP speed, ispo against Geneformer's original loop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from ispo.cli.app import app
from ispo.cli.options import (
    DeviceOpt,
    ModelOpt,
    OverwriteOpt,
    PeakOpt,
    RandomOpt,
    SeedOpt,
    VocabOpt,
)


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
    peak: PeakOpt = "auto",
) -> None:
    """Delete-all ISP speed: ispo vs Geneformer's original loop on the same cells."""
    import json
    import os

    import ispo
    from ispo.bench.isp import isp_speed
    from ispo.hardware import load_average
    from ispo.io.read import input_vocab, read_input
    from ispo.io.write import atomic_output
    from ispo.peak import PeakMode
    from ispo.provenance import cpu_info, device_name, git_commit, versions

    peak = str(PeakMode.parse(peak, "--peak"))
    voc = input_vocab(data, vocab)
    adata = read_input(data, backed=False)
    mdl = ispo.load_model(model, vocab=voc, device=device, random_init=random_init, seed=seed)
    load_start = load_average()
    res = isp_speed(
        adata,
        mdl,
        n_cells=n_cells,
        precisions=tuple(precisions.split(",")),
        batch_tokens=batch_tokens,
        with_original=not skip_original,
        peak=peak,
    )
    res.update(
        model=mdl.name,
        random_init=mdl.random_init,
        model_metadata=mdl.metadata(),
        data=data,
        device=device_name(mdl.device),
        cpu=cpu_info(peak),
        cpu_count=os.cpu_count(),
        load_average={"start": load_start, "end": load_average()},
        versions=versions(),
        commit=git_commit(),
    )
    lines = _table(res, mdl.name, mdl.random_init, data)
    with atomic_output(out, overwrite) as tmp:
        tmp.mkdir()
        (tmp / "results.json").write_text(json.dumps(res, indent=2))
        (tmp / "results.md").write_text("\n".join(lines) + "\n")
    typer.echo("\n".join(lines))


_HEADER = (
    "| method | precision | s | cells/s | perturbations/s | speedup | CPU-time speedup | "
    "outside encoder | TFLOP/s | MFU | max abs diff | max abs diff vs fp32 |"
)


def _table(res: dict, model: str, random_init: bool, data: str) -> list[str]:
    """The Markdown of ``results.md`` (also printed): one line per method, with the CPU-time
    speedup beside the wall one (a busy machine slows wall time, not CPU time) and the share
    of ispo's run spent outside the encoder (what batching and tables cost)."""
    from ispo.peak import Peak

    return [
        f"# ISP delete-all speed ({res['device']})",
        "",
        f"model {model} (random_init={random_init}), data {data}, "
        f"{res['n_cells']} cells, median {res['genes_per_cell_median']:.0f} tokens",
        "",
        _HEADER,
        "|" + "---|" * _HEADER.count(" | ") + "---|",
        *(_row(r) for r in res["rows"]),
        "",
        "MFU against: "
        + ("; ".join(Peak(**p).text() for p in res["mfu_peaks"].values()) or "no peak known")
        + ".",
        _load_line(res),
    ]


def _load_line(res: dict) -> str:
    """The machine's load during the run: on a shared machine wall times are pessimistic."""
    from ispo.provenance import machine_was_busy

    load = res["load_average"]
    if load["start"] is None:
        return "Load average: not available on this platform."
    return (
        f"1-minute load average {load['start']:.1f} at start, {load['end']:.1f} at end, on "
        f"{res['cpu_count']} CPUs"
        + (
            " (busy: wall times pessimistic, CPU-time speedups hold better)"
            if machine_was_busy(res)
            else ""
        )
        + "."
    )


def _row(r: dict) -> str:
    """One method's line of the table; "—" where a figure does not apply to it."""
    util = _opt(r["mfu"], lambda v: f"{100 * v:.1f} %")
    cpu = _opt(r.get("cpu_speedup_vs_original"), lambda v: f"{v:.2f}")
    outside = _opt(r.get("outside_encoder_share"), lambda v: f"{100 * v:.1f} %")
    vs_fp32 = _opt(r.get("max_abs_diff_vs_fp32"), lambda v: f"{v:.2e}")
    return (
        f"| {r['method']} | {r.get('precision', '—')} | {r['seconds']:.1f} | "
        f"{r['cells_per_s']:.3f} | {r['perturbations_per_s']:.1f} | "
        f"{r.get('speedup_vs_original', 1):.2f} | {cpu} | {outside} | "
        f"{r['tflop_per_s']:.3f} | {util} | {r.get('max_abs_diff_vs_original', 0):.2e} | "
        f"{vs_fp32} |"
    )


def _opt(value: float | None, fmt: Callable[[float], str]) -> str:
    """``fmt(value)``, or "—" for a figure the row does not have."""
    return "—" if value is None else fmt(value)
