"""The benchmark section: throughput, speedup, MFU and memory of every method of a
``results.json`` (``ispo benchmark``: ``{"meta": ..., "rows": [...]}``; other benchmark-style
files, rows with top-level metadata such as the perturbation benchmark's, show the columns they
have), on which machine and under which load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ispo.errors import IspoError
from ispo.provenance import machine_was_busy
from ispo.reporting.figures import Figures, bar_png
from ispo.reporting.render import fmt
from ispo.reporting.sections import (
    RANDOM_NOTE,
    SYNTHETIC_NOTE,
    Image,
    Section,
    label,
    read_json,
)

MARKERS = ("results.json",)


def finds(folder: Path) -> list[Path]:
    return [folder] if (folder / "results.json").is_file() else []


def _data(folder: Path) -> tuple[dict, list[dict], dict, dict]:
    """Meta, rows (the tokenizer's left out), model and data, read into one shape whether
    model and data are nested under ``meta`` (``ispo benchmark``) or plain top-level values."""
    data = read_json(folder / "results.json")
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise IspoError(
            f"{folder / 'results.json'} is not an ispo benchmark result (no rows): "
            "rerun ispo benchmark"
        )
    meta = data.get("meta")
    if not isinstance(meta, dict):
        meta = {k: v for k, v in data.items() if k != "rows"}
    rows = [r for r in data["rows"] if isinstance(r, dict) and r.get("family") != "tokenize"]
    model = meta.get("model")
    if not isinstance(model, dict):
        model = {"model": model, "random_init": meta.get("random_init")}
    dataset = meta.get("data")
    if not isinstance(dataset, dict):
        dataset = {"source": dataset, "n_cells": meta.get("n_cells")}
    return meta, rows, model, dataset


def _cpu(meta: dict) -> dict | None:
    """The CPU's name, cores, torch ISA, matrix-unit flags and estimated fp32 peak."""
    cpu = meta.get("cpu")
    if not isinstance(cpu, dict):
        return None
    peak = (cpu.get("peak_tflops") or {}).get("fp32")
    return {
        "model": cpu.get("model"),
        "cores": cpu.get("cores"),
        "capability": cpu.get("capability"),
        "flags": [k for k, v in (cpu.get("flags") or {}).items() if v],
        "peak_gflops": None if peak is None else peak * 1e3,
    }


def _load(meta: dict) -> dict | None:
    """The load average at start and end, and whether the machine was busy."""
    load = meta.get("load_average") or {}
    if load.get("start") is None:
        return None
    return {"start": load["start"], "end": load.get("end") or 0.0, "busy": machine_was_busy(meta)}


def _speedup(r: dict) -> float | None:
    """``speedup``, or the first ``speedup_vs_*`` a perturbation benchmark row has."""
    if r.get("speedup") is not None:
        return r["speedup"]
    return next((v for k, v in r.items() if k.startswith("speedup") and v is not None), None)


def _memory(r: dict) -> str | None:
    """Peak GPU memory where the row measured it, else the process's peak RSS."""
    if r.get("gpu_mem_peak_mib") is not None:
        return f"{r['gpu_mem_peak_mib'] / 1024:.2f} GiB (GPU)"
    if r.get("rss_peak_mib") is not None:
        return f"{r['rss_peak_mib'] / 1024:.2f} GiB (RSS)"
    return None


def _columns(rows: list[dict]) -> list[tuple[str, Callable[[dict], Any]]]:
    """The table's columns that some row has a value for (MFU and memory always: "-" says
    "not measured here", which is itself worth showing)."""
    speed_name = next((k for r in rows for k in r if k.startswith("speedup_vs_")), None)
    columns: list[tuple[str, Callable[[dict], Any]]] = [
        ("status", lambda r: r.get("status")),
        ("cells/s", lambda r: fmt(r.get("cells_per_s"))),
        ("perturbations/s", lambda r: fmt(r.get("perturbations_per_s"))),
        ("tokens/s", lambda r: fmt(r.get("tokens_per_s"))),
        (
            "speedup vs " + (speed_name[len("speedup_vs_") :] if speed_name else "baseline"),
            lambda r: None if _speedup(r) is None else f"{_speedup(r):.2f}x",
        ),
        ("MFU", lambda r: None if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"),
        ("peak memory", _memory),
        (
            "cosine to baseline (mean)",
            lambda r: None if r.get("cos_mean") is None else f"{r['cos_mean']:.6f}",
        ),
        ("batching / note", lambda r: r.get("reason") or r.get("batching")),
    ]
    return [
        (name, get)
        for name, get in columns
        if name in ("MFU", "peak memory") or any(get(r) not in (None, "-") for r in rows)
    ]


def _images(folder: Path, figures: Figures, meta: dict, rows: list[dict]) -> list[Image]:
    """The benchmark's own plots, or throughput and speedup drawn here where it has none."""
    ok = [
        r
        for r in rows
        if r.get("status", "ok") == "ok" and (r.get("cells_per_s") or r.get("perturbations_per_s"))
    ]
    names = [r.get("label") or r["method"] for r in ok]
    stem = label(folder)
    out = []
    for name, alt in (
        ("throughput", "throughput by method"),
        ("speedup", "speedup over the baseline"),
        ("memory", "peak memory by method"),
    ):
        img = figures.copy(folder / f"{name}.png", f"{stem}-{name}", alt)
        if img is None and name == "throughput" and ok:
            unit = "cells_per_s" if all(r.get("cells_per_s") for r in ok) else "perturbations_per_s"
            values = [r.get(unit) or 0.0 for r in ok]
            title = f"Throughput ({meta.get('device', '?')})"
            png = bar_png(
                figures.name(f"{stem}-throughput"),
                names,
                values,
                unit.replace("_per_s", "/s"),
                title,
            )
            img = figures.image(png, alt)
        if img is None and name == "speedup" and ok and all(_speedup(r) for r in ok):
            values = [_speedup(r) for r in ok]
            title = "Speedup over the baseline"
            png = bar_png(figures.name(f"{stem}-speedup"), names, values, "x baseline", title)
            img = figures.image(png, alt)
        if img is not None:
            out.append(img)
    return out


def section(folder: Path, figures: Figures) -> Section:
    meta, rows, model, dataset = _data(folder)
    kept = _columns(rows)
    table = {
        "headers": ["method", *(n for n, _ in kept)],
        "rows": [
            [r.get("label") or r.get("method"), *(get(r) or "-" for _, get in kept)] for r in rows
        ],
    }
    notes = [RANDOM_NOTE.format(what="this benchmark")] if model.get("random_init") else []
    if dataset.get("synthetic"):
        notes.append(SYNTHETIC_NOTE.format(what="this benchmark"))
    context = dict(
        label=label(folder),
        notes=notes,
        meta=meta,
        model=model,
        dataset={"n_cells": None, "tokens_mean": None, **dataset},
        cpu=_cpu(meta),
        load=_load(meta),
        table=table,
        images=_images(folder, figures, meta, rows),
    )
    return Section("benchmark.md.j2", context, bool(model.get("random_init")))
