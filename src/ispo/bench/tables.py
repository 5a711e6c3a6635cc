"""Benchmark outputs: ``results.json``, ``results.csv``, ``results.md``, PNG plots, the terminal
table, and (optionally) every method's embeddings in ``embeddings.npz``.

Files are written beside their final name and moved into place, so a crash never leaves a
half-written results file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from ispo.bench.rows import ROW_KEYS, BenchResult
from ispo.io.write import atomic_write
from ispo.peak import Peak
from ispo.provenance import machine_was_busy

# (header, row key or callable, format) of the summary table shared by terminal and Markdown.
_GIB = 1024.0


def _num(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return format(v, fmt)


def _rate(v: float | None) -> str:
    """Three significant digits for slow rows (0.034), one decimal for fast ones."""
    if v is None:
        return "—"
    return format(v, ".3f" if v < 1 else ".2f" if v < 100 else ",.1f")


def _mem(mib: float | None) -> str:
    if mib is None:
        return "—"
    return f"{mib / _GIB:.2f}"


def _pair(first: str, second: str, fmt: str) -> Any:
    """A column cell ``first / second`` (average and peak, min and mean), or a dash."""

    def cell(r: dict) -> str:
        if r[first] is None:
            return "—"
        return f"{format(r[first], fmt)} / {format(r[second], fmt)}"

    return cell


def _mfu(r: dict) -> str:
    if r["mfu"] is not None:
        return f"{100 * r['mfu']:.2f} %"
    if r["achieved_tflops"] is not None:
        return f"n/a ({r['achieved_tflops'] * 1e3:.1f} GFLOP/s)"
    return "—"


def _speed(r: dict) -> str:
    return "—" if r["speedup"] is None else f"{r['speedup']:.2f}x"


COLUMNS: list[tuple[str, Any]] = [
    ("Method", lambda r: r["label"] if r["status"] == "ok" else f"{r['label']} ({r['status']})"),
    ("Time (s)", lambda r: _num(r["time_s"], ".3f")),
    ("Cells/s", lambda r: _rate(r["cells_per_s"])),
    ("Tokens/s", lambda r: _num(r["tokens_per_s"], ",.0f")),
    ("Speedup", _speed),
    ("MFU", _mfu),
    (
        "Work",
        lambda r: (
            "—"
            if not r["model_flops"] or r["executed_flops"] is None
            else f"{r['executed_flops'] / r['model_flops']:.2f}x"
        ),
    ),
    ("CPU % avg/peak", _pair("cpu_percent_avg", "cpu_percent_peak", ".0f")),
    ("CPU s/cell", lambda r: _num(r.get("cpu_s_per_cell"), ".3f")),
    ("GPU % avg/peak", _pair("gpu_util_avg", "gpu_util_peak", ".0f")),
    ("RSS peak (GiB)", lambda r: _mem(r["rss_peak_mib"])),
    ("GPU mem peak (GiB)", lambda r: _mem(r["gpu_mem_peak_mib"])),
    (
        "Pad %",
        lambda r: _num(None if r["pad_fraction"] is None else 100 * r["pad_fraction"], ".0f"),
    ),
    ("cos min / mean", _pair("cos_min", "cos_mean", ".6f")),
]


def table_rows(result: BenchResult) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the summary table."""
    header = [c[0] for c in COLUMNS]
    return header, [[f(r) for _, f in COLUMNS] for r in result.rows]


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _finite(o: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN)."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def to_json(result: BenchResult) -> str:
    return json.dumps(
        _finite({"meta": result.meta, "rows": result.rows}),
        indent=2,
        default=_json_default,
        allow_nan=False,
    )


def to_csv(result: BenchResult) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROW_KEYS, lineterminator="\n")
    w.writeheader()
    for r in result.rows:
        out = dict(r)
        if isinstance(out.get("time_s_passes"), list):
            out["time_s_passes"] = ";".join(f"{t:.6f}" for t in out["time_s_passes"])
        w.writerow({k: "" if out[k] is None else out[k] for k in ROW_KEYS})
    return buf.getvalue()


def _load_text(meta: dict) -> str:
    load = meta.get("load_average") or {}
    if load.get("start") is None:
        return ""
    busy = machine_was_busy(meta)
    return (
        f"; 1-min load average {load['start']:.1f} at start, {load.get('end') or 0:.1f} at "
        "end"
        + (
            " — **other processes competed for the CPU: absolute figures are "
            "pessimistic and noisy**"
            if busy
            else ""
        )
    )


def _cpu_text(meta: dict) -> str:
    """The CPU line of the header: results from different CPUs differ more than methods do."""
    cpu = meta.get("cpu")
    if not cpu:  # results written before the CPU was recorded
        return "- **CPU**: not recorded"
    flags = [k for k, v in cpu["flags"].items() if v]
    physical = cpu.get("physical_cores")
    clock = ""
    if cpu["mhz"]:
        source = cpu.get("clock_source")
        clock = f"{cpu['mhz'] / 1000:.2f} GHz" + (f" ({source})" if source else "") + ", "
    text = (
        f"- **CPU**: {cpu['model'] or 'unknown model'}, {cpu['cores']} cores"
        + (f" ({physical} physical)" if physical not in (None, cpu["cores"]) else "")
        + f", {cpu['threads']} torch threads, torch ISA {cpu['capability']}, "
        + clock
        + (", ".join(flags) if flags else "no bf16/fp16/int8 matrix units")
    )
    if "mfu_peaks" in meta:  # the peaks are their own line
        return text
    # results written before the peaks said where they come from: the formula's estimate
    peaks = cpu["peak_tflops"]
    peak = ", ".join(f"{k} {v * 1e3:,.0f}" for k, v in peaks.items() if v is not None)
    return text + (f"; estimated peak GFLOP/s {peak}" if peak else "; peak unknown")


def _peaks_text(meta: dict) -> list[str]:
    """The line naming each peak MFU is measured against: value, source and how."""
    peaks = meta.get("mfu_peaks")
    if not peaks:
        return []
    return ["- **MFU against**: " + "; ".join(Peak(**p).text() for p in peaks.values())]


def read_results(out: str | Path) -> BenchResult:
    """A :class:`BenchResult` from a results folder's ``results.json`` (no embeddings)."""
    data = json.loads((Path(out) / "results.json").read_text())
    rows = [{**dict.fromkeys(ROW_KEYS), **r} for r in data["rows"]]
    return BenchResult(data["meta"], rows)


def _header_lines(m: dict) -> list[str]:
    """The run's bullet list: device, CPU, model, data, versions, date."""
    arch = m["model"]["architecture"]
    data = m["data"]
    v = m["versions"]
    return [
        "# ispo benchmark: methods table",
        "",
        f"- **device**: {m['device']}; {m['cpu_count']} CPUs" + _load_text(m),
        _cpu_text(m),
        *_peaks_text(m),
        f"- **model**: `{m['model']['model']}` — {arch['n_layers']} layers, hidden "
        f"{arch['hidden']}, intermediate {arch['intermediate']}, vocab {arch['vocab_size']:,}"
        + (
            " — **RANDOM WEIGHTS** (seed {}), speed only".format(m["model"]["seed"])
            if m["model"]["random_init"]
            else ""
        )
        + f"; embeddings from layer {m['layers_run']} of {arch['n_layers']}"
        + (
            f" — **ISPO_FAULT={m['model']['ispo_fault']} was set: faults injected**"
            if m["model"].get("ispo_fault")
            else ""
        ),
        f"- **data**: {data['source']}"
        + (
            " (SYNTHETIC)"
            if data["synthetic"] and "synthetic" not in data["source"].lower()
            else ""
        )
        + f", vocab `{data['vocab']}`: {data['n_cells']:,} cells, {data['tokens_total']:,} "
        f"tokens (mean {data['tokens_mean']:.0f}, median {data['tokens_median']:.0f}, max "
        f"{data['tokens_max']:,} per cell)",
        f"- **versions**: ispo {v['ispo']}, torch {v['torch']}, transformers "
        f"{v['transformers']}, python {v['python']}; git commit `{m['git_commit']}`",
        f"- **created**: {m['created']}; platform {m['platform']}",
        "",
    ]


def _table_lines(result: BenchResult) -> list[str]:
    """The summary table in Markdown (a ``|`` inside a cell would split it: shown as ``/``)."""
    header, rows = table_rows(result)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in r) + " |")
    return lines


def _how_to_read(m: dict) -> list[str]:
    """What each column means and how it was measured."""
    return [
        "",
        "## How to read it",
        "",
        "- **Time** is the median steady-state pass over all cells (one warm-up batch "
        f"first, at most {m['config']['warmup_cells']} cells of it, a full warm-up pass "
        "for compiled methods; the device synchronised before "
        "each clock read); model build, quantization and compilation are in `setup_s`, "
        "warm-up in `warmup_s` (results.json/csv). **Cells/s** and **tokens/s** "
        "(unpadded tokens) come from that time. **Speedup** is cells/s over the fp32 "
        "baseline's, in this same run on the same cells.",
        f"- **MFU**: {m['mfu_definition']}. Where no peak is known the achieved model "
        "GFLOP/s is shown instead.",
        "- **CPU %** is the process's CPU time over wall time (100 = one core busy), "
        "average over the timed passes and peak over 0.1 s samples; **CPU s/cell** is the "
        "process's CPU time per cell in the median pass (on a shared machine the ratio of "
        "these is what a quiet machine's speedup would be, roughly); **GPU %** is NVML "
        "utilisation; **RSS peak** is the process's resident memory during the row (the "
        "interpreter, torch, the model and the data included); **GPU mem peak** is "
        "`torch.cuda.max_memory_allocated` within the row.",
        "- **Work** is the FLOPs the method computes (every layer and the MLM head on "
        "the reference path) over the FLOPs the embedding needs, both on unpadded "
        "tokens; **Pad %** is the share of computed positions that were padding. "
        "Together they bound what removing work alone can gain.",
        "- **cos min / mean**: cosine similarity of each cell's embedding to the fp32 baseline's.",
        "- **bs=256→16**: a batch size above the number of cells runs one batch of all of them "
        "(the method is unchanged; the run has fewer cells than the batch). **[3 of 16 cells]**: "
        "a method whose pass would exceed the row budget (`config.row_budget_s`, at least 3 "
        "baseline passes; never a batching row) was timed on the first cells that fit it; its "
        "rates are per cell and its consistency is against the baseline's embeddings of those "
        "cells.",
        "",
    ]


def _row_notes(result: BenchResult) -> list[str]:
    """Rows that did not run, and the backend (with setup and warm-up) of those that did."""
    lines: list[str] = []
    notes = [r for r in result.rows if r["status"] != "ok"]
    if notes:
        lines += ["", "## Rows that did not run", ""]
        for r in notes:
            lines.append(f"- `{r['method']}` **{r['status']}**: {r['reason']}")
    backends = [r for r in result.rows if r["status"] == "ok" and r["backend"]]
    if backends:
        lines += ["", "## Backends", ""]
        for r in backends:
            extra = (
                f"; setup {r['setup_s']:.2f} s, warm-up {r['warmup_s']:.2f} s"
                if r.get("setup_s") is not None
                else ""
            )
            lines.append(f"- `{r['method']}`: {r['backend']}{extra}")
    return lines


def _tokenizer_lines(result: BenchResult) -> list[str]:
    """The tokenizer row, told as a sentence (it has no place among the encoder methods)."""
    tok = next((r for r in result.rows if r["family"] == "tokenize"), None)
    if tok is None:
        return []
    return [
        "",
        "## Tokenizer",
        "",
        f"Rank-value tokenization of {tok['n_cells']:,} cells of the same data: "
        f"{tok['cells_per_s']:,.0f} cells/s, {tok['tokens_per_s']:,.0f} tokens/s "
        f"(median of {len(tok['time_s_passes'])} runs, one process, after one "
        "warm-up run).",
    ]


def to_markdown(result: BenchResult) -> str:
    """``results.md``: the run's header, the table, how to read it, then per-row notes."""
    m = result.meta
    lines = _header_lines(m) + _table_lines(result) + _how_to_read(m)
    lines += ["## Methods", ""]
    lines += [f"- `{name}`: {desc}" for name, desc in m["methods"].items()]
    lines += _row_notes(result) + _tokenizer_lines(result)
    lines += [
        "",
        "Plots: `throughput.png`, `speedup.png`, `memory.png`. Raw figures: "
        "`results.json`, `results.csv`.",
        "",
    ]
    return "\n".join(lines)


def _bar_plot(
    labels: list[str],
    values: list[float],
    path: Path,
    *,
    title: str,
    xlabel: str,
    log: bool = False,
    ref: float | None = None,
    colors: list[str] | None = None,
) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 0.45 * len(labels) + 1.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = np.arange(len(labels))
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    # log only where values span decades (a GPU table: 1 to 30,000 cells/s); on a narrow range
    # log ticks crowd into unreadable labels ("2x10^-1 3x10^-1 ...")
    if log and all(v > 0 for v in values) and max(values) > 30 * min(values):
        ax.set_xscale("log")
        xlabel += " (log scale)"
    if ref is not None:
        ax.axvline(ref, color="black", linewidth=0.8, linestyle="--")
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:,.3g}", va="center", fontsize="small")
    ax.set_xlabel(xlabel)
    # over the whole figure, not the axes: long row labels push the axes right and an axes
    # title past the figure's edge
    fig.suptitle(textwrap.fill(title, 90), fontsize="medium")
    ax.margins(x=0.12)  # room for the value labels right of the bars
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _colour(r: dict) -> str:
    return {
        "baseline": "#7f7f7f",
        "batching": "#1f77b4",
        "mixed_precision": "#ff7f0e",
        "quantization": "#9467bd",
        "fast": "#2ca02c",
    }.get(r["family"], "#8c564b")


def _short_device(meta: dict) -> str:
    """``cpu (AMD EPYC, 2 cores)`` or the GPU's name: what a plot title has room for."""
    cpu = meta.get("cpu")
    if meta.get("device_type") == "cpu" and cpu:
        return f"cpu ({cpu['model'] or 'unknown model'}, {cpu['cores']} cores)"
    return str(meta["device"])


def write_plots(result: BenchResult, out: Path) -> list[Path]:
    """throughput.png, speedup.png and memory.png for the rows that ran."""
    ok = [r for r in result.rows if r["status"] == "ok" and r["family"] != "tokenize"]
    if not ok:
        return []
    labels = [r["label"] for r in ok]
    colors = [_colour(r) for r in ok]
    m = result.meta
    what = f"{Path(m['model']['model']).name}, {m['data']['n_cells']:,} cells, {_short_device(m)}"
    paths = [
        _bar_plot(
            labels,
            [r["cells_per_s"] for r in ok],
            out / "throughput.png",
            title=f"Throughput: {what}",
            xlabel="cells/s (steady state)",
            log=True,
            colors=colors,
        )
    ]
    if all(r["speedup"] is not None for r in ok):
        paths.append(
            _bar_plot(
                labels,
                [r["speedup"] for r in ok],
                out / "speedup.png",
                title=f"Speedup over the fp32 baseline: {what}",
                xlabel="x baseline (cells/s ratio, same run)",
                ref=1.0,
                colors=colors,
            )
        )
    gpu = all(r["gpu_mem_peak_mib"] is not None for r in ok)
    mem = [(r["gpu_mem_peak_mib"] if gpu else r["rss_peak_mib"]) / _GIB for r in ok]
    paths.append(
        _bar_plot(
            labels,
            mem,
            out / "memory.png",
            title="Peak GPU memory (max_memory_allocated)"
            if gpu
            else "Peak host memory (process RSS during each row)",
            xlabel="GiB",
            colors=colors,
        )
    )
    return paths


def write_results(
    result: BenchResult, out: str | Path, *, plots: bool = True, embeddings: bool = True
) -> list[Path]:
    """Write every output into ``out`` (created if missing); returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        ("results.json", to_json(result)),
        ("results.csv", to_csv(result)),
        ("results.md", to_markdown(result)),
    ):
        atomic_write(out / name, text.encode())
        written.append(out / name)
    if embeddings and result.embeddings:
        buf = io.BytesIO()
        np.savez_compressed(
            buf, **{k.replace("+", "_plus_"): v for k, v in result.embeddings.items()}
        )
        atomic_write(out / "embeddings.npz", buf.getvalue())
        written.append(out / "embeddings.npz")
    if plots:
        written += write_plots(result, out)
    return written


def print_table(result: BenchResult, console: Any = None) -> None:
    """The summary table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or logged: do not squeeze the table into 80 columns
            console = Console(width=max(console.width, 200))
    m = result.meta
    title = (
        f"ispo benchmark — {m['model']['model']}"
        + (" (random weights)" if m["model"]["random_init"] else "")
        + f" on {m['device']}, {m['data']['n_cells']:,} cells"
    )
    table = Table(title=title, show_lines=False)
    header, rows = table_rows(result)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for r, cells in zip(result.rows, rows):
        style = None if r["status"] == "ok" else "dim"
        table.add_row(*cells, style=style)
    console.print(table)
    for r in result.rows:
        if r["status"] != "ok":
            console.print(f"[yellow]{r['method']}[/] {r['status']}: {r['reason']}")
