"""``ispo report``: one Markdown + HTML report from benchmark, evaluate, tune and perturb results.

A result folder's kind is told by its files:

========== ==========================================================================
benchmark  ``results.json`` (``ispo benchmark``: ``{"meta": ..., "rows": [...]}``)
evaluate   ``metrics.json`` (``ispo evaluate``)
tune       ``summary.json`` of kind ``tune``, ``best.yaml`` or ``study.db`` (``ispo tune``)
perturb    a ``.parquet`` results table with its metadata ``.json`` (``ispo perturb``)
========== ==========================================================================

A perturb ``.parquet`` file can also be passed directly. The report is built as a small
:class:`Document` (headings, paragraphs, notes, tables, images) rendered twice: ``report.md``
with the figures copied into ``figures/``, and ``report.html``, a single self-contained file with
the figures embedded. Whenever a result was made with random weights (``random_init``), its
section, and the report's top, say that its figures mean nothing biologically.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ispo.errors import IspoError
from ispo.provenance import machine_was_busy
from ispo.reporting.document import Document, fmt

log = logging.getLogger(__name__)

RANDOM_NOTE = (
    "RANDOM WEIGHTS: {what} was made with a model with seeded random weights; its "
    "speed figures are real, but anything biological (classification, clustering, "
    "perturbation hits) means nothing"
)
SYNTHETIC_NOTE = "SYNTHETIC DATA: {what} ran on ispo's built-in synthetic demo data, not biology"
TOP_HITS = 20
TOP_TRIALS = 15


# ---------------------------------------------------------------------------------------------
# Finding results
# ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    """One result found in an input: its kind and the path it was read from."""

    kind: str  # benchmark | evaluate | tune | perturb
    path: Path


def detect(path: str | Path) -> list[Result]:
    """The results in a folder (or a perturb ``.parquet`` / result ``.json`` file), by their
    files.

    Raises
    ------
    IspoError
        If the path does not exist or holds no recognised result.
    """
    path = Path(path)
    if not path.exists():
        raise IspoError(f"report input {path} does not exist: pass a result folder")
    if path.is_file():
        if path.suffix == ".parquet":
            return [Result("perturb", path)]
        if path.name in ("results.json", "metrics.json", "summary.json", "best.yaml", "study.db"):
            return detect(path.parent)
        raise IspoError(
            f"report input {path} is a file ispo report does not read: pass a "
            "result folder or a perturb .parquet"
        )
    found: list[Result] = []
    if (path / "results.json").is_file():
        found.append(Result("benchmark", path))
    if (path / "metrics.json").is_file():
        found.append(Result("evaluate", path))
    if _is_tune(path):
        found.append(Result("tune", path))
    for pq in sorted(path.glob("*.parquet")):
        if not pq.name.endswith(".genes.parquet") and _perturb_metadata_path(pq) is not None:
            found.append(Result("perturb", pq))
    if not found:
        raise IspoError(
            f"{path} holds no ispo result (results.json, metrics.json, tune "
            "summary.json/best.yaml/study.db, or a .parquet with its .json): pass "
            "the folder a command wrote"
        )
    return found


def _is_tune(path: Path) -> bool:
    summary = path / "summary.json"
    if summary.is_file():
        try:
            if json.loads(summary.read_text()).get("kind") == "tune":
                return True
        except (json.JSONDecodeError, AttributeError):
            pass
    return (path / "best.yaml").is_file() or (path / "study.db").is_file()


def _perturb_metadata_path(pq: Path) -> Path | None:
    for side in (
        pq.with_suffix(".json"),
        pq.with_name(pq.name + ".json"),
        pq.with_suffix(".meta.json"),
    ):
        if side.is_file():
            return side
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IspoError(
            f"cannot read {path} as JSON ({type(exc).__name__}): rerun the command that wrote it"
        ) from exc


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


class _Figures:
    """Copies figures into the report's ``figures/`` folder under unique names."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.used: set[str] = set()

    def name(self, stem: str) -> Path:
        base = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem) or "figure"
        name, i = f"{base}.png", 1
        while name in self.used:
            i += 1
            name = f"{base}-{i}.png"
        self.used.add(name)
        (self.root / "figures").mkdir(exist_ok=True)
        return self.root / "figures" / name

    def copy(self, src: Path, stem: str) -> str | None:
        if not src.is_file():
            return None
        dest = self.name(stem)
        shutil.copyfile(src, dest)
        return f"figures/{dest.name}"


def _label(path: Path) -> str:
    return path.name or str(path)


def _machine_text(meta: dict) -> str:
    """The CPU and the load during the run: CPU figures differ between CPUs and under load."""
    parts = []
    cpu = meta.get("cpu")
    if isinstance(cpu, dict):
        flags = [k for k, v in (cpu.get("flags") or {}).items() if v]
        peak = (cpu.get("peak_tflops") or {}).get("fp32")
        parts.append(
            f"CPU {cpu.get('model') or 'unknown model'}: {cpu.get('cores')} cores, torch ISA "
            f"{cpu.get('capability')}, "
            + (", ".join(flags) or "no bf16/fp16/int8 matrix units")
            + ("" if peak is None else f", estimated fp32 peak {peak * 1e3:,.0f} GFLOP/s")
        )
    load = meta.get("load_average") or {}
    if load.get("start") is not None:
        busy = machine_was_busy(meta)
        parts.append(
            f"1-minute load average {load['start']:.1f} at start, {load.get('end') or 0:.1f} at "
            "end"
            + (
                ": other processes competed for the CPU, absolute figures are pessimistic "
                "(ratios measured in the same run hold better)"
                if busy
                else ""
            )
        )
    return ". ".join(parts) + ("." if parts else "")


def _benchmark_data(folder: Path) -> tuple[dict, list[dict], dict, dict]:
    """Meta, rows (tokenizer row left out), model and data of a results.json.

    ``ispo benchmark`` nests model and data as dicts under ``meta``; other benchmark-style files
    keep them as plain values at the top level: both are read into the same shape.
    """
    data = _read_json(folder / "results.json")
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise IspoError(
            f"{folder / 'results.json'} is not an ispo benchmark result (no rows): "
            "rerun ispo benchmark"
        )
    meta = (
        data.get("meta")
        if isinstance(data.get("meta"), dict)
        else {k: v for k, v in data.items() if k != "rows"}
    )
    rows = [r for r in data["rows"] if isinstance(r, dict) and r.get("family") != "tokenize"]
    model = meta.get("model")
    model = (
        model
        if isinstance(model, dict)
        else {"model": model, "random_init": meta.get("random_init")}
    )
    dataset = meta.get("data")
    dataset = (
        dataset
        if isinstance(dataset, dict)
        else {"source": dataset, "n_cells": meta.get("n_cells")}
    )
    return meta, rows, model, dataset


def _benchmark_intro(folder: Path, meta: dict, model: dict, dataset: dict) -> Document:
    """Heading, random-weight and synthetic-data notes, and what ran on which machine."""
    doc = Document().heading(f"Benchmark: {_label(folder)}", 2)
    if model.get("random_init"):
        doc.note(RANDOM_NOTE.format(what="this benchmark"))
    if dataset.get("synthetic"):
        doc.note(SYNTHETIC_NOTE.format(what="this benchmark"))
    doc.paragraph(
        f"Device {meta.get('device', '?')}; model {model.get('model', '?')}; data "
        f"{dataset.get('source', '?')} ({fmt(dataset.get('n_cells'))} cells"
        + (
            f", mean {fmt(dataset['tokens_mean'])} tokens per cell"
            if dataset.get("tokens_mean") is not None
            else ""
        )
        + ")"
        + (f"; created {meta['created']}" if meta.get("created") else "")
        + "."
    )
    machine = _machine_text(meta)
    if machine:
        doc.paragraph(machine)
    return doc


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


def _benchmark_columns(rows: list[dict]) -> list[tuple[str, Any]]:
    """The table's columns that some row has a value for (MFU and memory always: "-" says
    "not measured here", which is itself worth showing)."""
    speed_name = next((k for r in rows for k in r if k.startswith("speedup_vs_")), None)
    columns: list[tuple[str, Any]] = [
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


def _benchmark_images(
    doc: Document, folder: Path, figures: _Figures, meta: dict, rows: list[dict]
) -> None:
    """The benchmark's own plots, or throughput and speedup drawn here where it has none."""
    ok = [
        r
        for r in rows
        if r.get("status", "ok") == "ok" and (r.get("cells_per_s") or r.get("perturbations_per_s"))
    ]
    for name, alt in (
        ("throughput", "throughput by method"),
        ("speedup", "speedup over the baseline"),
        ("memory", "peak memory by method"),
    ):
        rel = figures.copy(folder / f"{name}.png", f"{_label(folder)}-{name}")
        if rel is None and name == "throughput" and ok:
            unit = "cells_per_s" if all(r.get("cells_per_s") for r in ok) else "perturbations_per_s"
            rel = _bar_png(
                figures.name(f"{_label(folder)}-throughput"),
                [r.get("label") or r["method"] for r in ok],
                [r.get(unit) or 0.0 for r in ok],
                unit.replace("_per_s", "/s"),
                f"Throughput ({meta.get('device', '?')})",
            )
        if rel is None and name == "speedup" and ok and all(_speedup(r) for r in ok):
            rel = _bar_png(
                figures.name(f"{_label(folder)}-speedup"),
                [r.get("label") or r["method"] for r in ok],
                [_speedup(r) for r in ok],
                "x baseline",
                "Speedup over the baseline",
            )
        if rel is not None:
            doc.image(rel, alt)


def benchmark_section(folder: Path, figures: _Figures) -> tuple[Document, bool]:
    """Throughput, speedup, MFU and memory of every benchmark method.

    Reads ``ispo benchmark``'s ``{"meta": ..., "rows": [...]}``; other benchmark-style files
    (rows plus top-level metadata, e.g. the perturbation benchmark) are shown with the columns
    they have.
    """
    meta, rows, model, dataset = _benchmark_data(folder)
    doc = _benchmark_intro(folder, meta, model, dataset)
    kept = _benchmark_columns(rows)
    doc.table(
        ["method", *(n for n, _ in kept)],
        [[r.get("label") or r.get("method"), *((get(r) or "-") for _, get in kept)] for r in rows],
    )
    if meta.get("mfu_definition"):
        doc.paragraph(f"MFU: {meta['mfu_definition']}.")
    _benchmark_images(doc, folder, figures, meta, rows)
    return doc, bool(model.get("random_init"))


def evaluate_section(folder: Path, figures: _Figures) -> tuple[Document, bool]:
    """The evaluation's tables and plots (as ``ispo evaluate`` wrote them)."""
    from ispo.reporting.summary import evaluation_document

    result = _read_json(folder / "metrics.json")
    if not isinstance(result, dict) or "classification" not in result:
        raise IspoError(
            f"{folder / 'metrics.json'} is not an ispo evaluate result: rerun ispo evaluate"
        )
    images = {}
    for key in ("embedding", "confusion"):
        rel = figures.copy(folder / f"{key}.png", f"{_label(folder)}-{key}")
        if rel is not None:
            images[key] = rel
    p = result.get("params", {})
    doc = evaluation_document(
        result,
        images=images,
        level=2,
        title=f"Evaluation: {_label(folder)} ({p.get('embedding_key', '?')}"
        f" by {p.get('label_key', '?')})",
    )
    return doc, bool(result.get("random_init"))


_TRIAL_HEADER = [
    "trial",
    "state",
    "cells/s",
    "mean cosine",
    "peak MiB",
    "feasible",
    "precision",
    "batch tokens",
    "attention",
    "compile",
    "int8",
    "note",
]


def _trial_row(t: dict) -> list[Any]:
    """One trial's figures and settings, its reason (pruned, copied) as the note."""
    st = t.get("settings", {})
    return [
        t["number"],
        t["state"],
        fmt(t.get("cells_per_s")),
        fmt(t.get("cos_mean"), 7),
        fmt(t.get("mem_peak_mib")),
        "yes" if t.get("feasible") else "no",
        st.get("precision", "-"),
        fmt(st.get("batch_tokens")),
        st.get("attention", "-"),
        fmt(st.get("compile")),
        fmt(st.get("int8")),
        t.get("reason")
        or (
            f"same setting as trial {t['copied_from']}" if t.get("copied_from") is not None else ""
        ),
    ]


def _tune_best(doc: Document, folder: Path, s: dict) -> None:
    """The best trial against the default setting, and the best.yaml to reuse it."""
    best, default = s.get("best"), s.get("default_trial")
    if best is None:
        doc.paragraph("No setting met the constraints.")
        return
    speed = s.get("speedup_vs_default")
    doc.paragraph(
        f"Best: trial {best['number']}, {fmt(best['cells_per_s'])} cells/s"
        + (
            f", {speed:.2f}x the default setting ({fmt(default['cells_per_s'])} cells/s)"
            if speed and default
            else ""
        )
        + f"; mean cosine {fmt(best.get('cos_mean'), 7)}, min {fmt(best.get('cos_min'), 7)};"
        f" peak memory {fmt(best.get('mem_peak_mib'))} MiB."
    )
    best_yaml = folder / "best.yaml"
    if best_yaml.is_file():
        doc.code(best_yaml.read_text(), "yaml")


def _tune_trials(doc: Document, folder: Path, figures: _Figures, s: dict) -> None:
    """The fastest trials as a table, and every finished trial as a plot."""
    trials = s.get("trials", [])
    ranked = sorted(
        trials, key=lambda t: (t.get("cells_per_s") is None, -(t.get("cells_per_s") or 0.0))
    )
    doc.table(_TRIAL_HEADER, [_trial_row(t) for t in ranked[:TOP_TRIALS]])
    if len(trials) > TOP_TRIALS:
        doc.paragraph(
            f"Fastest {TOP_TRIALS} of {len(trials)} trials; all are in summary.json and trials.csv."
        )
    done = [t for t in trials if t.get("cells_per_s") is not None]
    if done:
        min_cosine = s.get("constraints", {}).get("min_cosine_mean")
        rel = _trials_png(figures.name(f"{_label(folder)}-trials"), done, min_cosine)
        doc.image(rel, "throughput of each trial (feasible in colour)")


def tune_section(folder: Path, figures: _Figures) -> tuple[Document, bool]:
    """The best setting, its speedup, and the trials of an ``ispo tune`` study."""
    doc = Document().heading(f"Tuning: {_label(folder)}", 2)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        doc.paragraph(
            "No summary.json (the search was stopped before writing it): rerun the "
            "same ispo tune command to resume the study and write it."
        )
        return doc, False
    s = _read_json(summary_path)
    ident = s.get("identity", {})
    random_init = bool(ident.get("random_init"))
    if random_init:
        doc.note(
            "RANDOM WEIGHTS: this search used a model with seeded random weights; speed "
            "does not depend on the weights' values, but consistency (cosine to fp32) can: "
            "re-check the chosen setting with the trained checkpoint"
        )
    c = s.get("constraints", {})
    doc.paragraph(
        f"Objective: {s.get('objective', 'throughput')}. Constraints: mean cosine to the fp32 "
        f"result >= {c.get('min_cosine_mean')}, peak memory <= "
        f"{fmt(c.get('memory_cap_mib'))} MiB. Model {ident.get('model', '?')} on "
        f"{ident.get('device', '?')}, data {ident.get('data', '?')} "
        f"({fmt(ident.get('n_cells'))} cells). {s.get('n_trials', 0)} trials: "
        f"{s.get('n_complete', 0)} complete, {s.get('n_pruned', 0)} pruned, "
        f"{s.get('n_feasible', 0)} feasible."
    )
    _tune_best(doc, folder, s)
    _tune_trials(doc, folder, figures, s)
    return doc, random_init


def perturb_section(pq: Path, figures: _Figures) -> tuple[Document, bool]:
    """Top perturbation hits with their statistics."""
    from ispo.perturbation.plots import hits_png
    from ispo.perturbation.stats import perturb_stats

    meta_path = _perturb_metadata_path(pq)
    meta = _read_json(meta_path) if meta_path is not None else {}
    meta = meta if isinstance(meta, dict) else {}
    inner = meta.get("metadata", meta) if isinstance(meta.get("metadata"), dict) else meta
    random_init = bool(inner.get("random_init"))
    params = inner.get("params", {}) or {}
    doc = Document().heading(f"Perturbation: {pq.name}", 2)
    if random_init:
        doc.note(RANDOM_NOTE.format(what="this perturbation run"))
    doc.paragraph(
        f"Model {inner.get('model', '?')}; {params.get('perturb_type', '?')} of "
        f"{params.get('genes', '?')} genes in {fmt(inner.get('n_cells_selected'))} cells; "
        f"{fmt(inner.get('n_rows'))} rows; {fmt(inner.get('perturbations_per_s'))} "
        f"perturbations/s on {inner.get('device', '?')}."
    )
    try:
        agg = perturb_stats(pq, mode="aggregate")
    except IspoError as exc:
        doc.paragraph(f"No statistics: {exc}")
        return doc, random_init
    top = agg.head(TOP_HITS)
    cols = [
        c
        for c in (
            "perturbed_symbols",
            "perturbed_ids",
            "n_cells",
            "cos_sim_mean",
            "cos_sim_median",
            "cos_sim_std",
            "cell_cos_sim_mean",
        )
        if c in top.columns
    ]
    cols += [c for c in top.columns if c.startswith("shift_") and c.endswith("_mean")]
    doc.heading("Top hits (strongest embedding change: lowest mean cosine)", 3)
    doc.table(cols, [[_cell(v) for v in row] for row in top[cols].itertuples(index=False)])
    if len(agg) > TOP_HITS:
        doc.paragraph(f"Top {TOP_HITS} of {len(agg):,} perturbed genes.")
    states = params.get("cell_states") or {}
    if states and states.get("goal_state"):
        _goal_shift_part(doc, pq, states, figures)
    if len(top):
        png = hits_png(top, figures.name(f"{pq.stem}-hits"), random_init=random_init)
        doc.image(f"figures/{png.name}", "top perturbation hits")
    return doc, random_init


def _goal_shift_part(doc: Document, pq: Path, states: dict, figures: _Figures) -> None:
    """Which perturbations move cells toward the goal state: the paired test and its volcano."""
    from ispo.perturbation.plots import volcano_png
    from ispo.perturbation.stats import perturb_stats
    from ispo.perturbation.stats.paired import SUMMARY_COLUMNS, paired_summary

    goal_state = states["goal_state"]
    try:
        goal = perturb_stats(
            pq,
            mode="goal_state_shift",
            goal_state=goal_state,
            alt_states=states.get("alt_states") or [],
        )
    except IspoError as exc:
        doc.paragraph(f"No goal-state statistics: {exc}")
        return
    doc.heading(f"Which perturbations move cells toward the goal state {goal_state!r}", 3)
    doc.paragraph(paired_summary(goal))
    g = goal.head(TOP_HITS)
    cols = [c for c in SUMMARY_COLUMNS if c in g.columns]
    doc.table(cols, [[_cell(v) for v in row] for row in g[cols].itertuples(index=False)])
    png = volcano_png(goal, figures.name(f"{pq.stem}-volcano"))
    doc.image(f"figures/{png.name}", "volcano: mean shift toward the goal vs -log10 FDR")


SECTIONS = {
    "benchmark": benchmark_section,
    "evaluate": evaluate_section,
    "tune": tune_section,
    "perturb": perturb_section,
}


def _report_top(title: str, results: list[Result], any_random: bool) -> Document:
    """The title, one random-weights warning for the whole report, and what it contains."""
    doc = Document().heading(title, 1)
    if any_random:
        doc.note(
            "Some results below come from models with seeded random weights: speed "
            "figures are real, biological figures (classification, clustering, "
            "perturbation hits) mean nothing for them; each such section says so."
        )
    counts: dict[str, int] = {}
    for r in results:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    doc.paragraph(
        "Contents: "
        + ", ".join(f"{n} {k}" for k, n in counts.items())
        + " ("
        + ", ".join(str(r.path) for r in results)
        + ")."
    )
    return doc


def build_report(
    inputs: list[str | Path],
    out: str | Path,
    *,
    title: str = "ispo report",
    overwrite: bool = False,
    run_config: dict | None = None,
) -> dict[str, Path]:
    """Write ``out/report.md``, ``out/report.html`` (self-contained) and ``out/figures/``.

    Returns
    -------
    dict
        ``{"markdown": path, "html": path, "folder": out}``.

    Raises
    ------
    IspoError
        If no input is given, an input holds no recognised result, or ``out`` exists.
    """
    from ispo.io.write import atomic_output, check_output

    if not inputs:
        raise IspoError("no result folders given: ispo report DIR [DIR...] --out REPORT_DIR")
    out = Path(out)
    check_output(out, overwrite)
    results = [r for p in inputs for r in detect(p)]
    with atomic_output(out, overwrite) as tmp:
        tmp.mkdir()
        figures = _Figures(tmp)
        sections: list[Document] = []
        any_random = False
        for r in results:
            doc, random_init = SECTIONS[r.kind](r.path, figures)
            sections.append(doc)
            any_random |= random_init
        doc = _report_top(title, results, any_random)
        for s in sections:
            doc.extend(s)
        (tmp / "report.md").write_text(doc.to_markdown())
        (tmp / "report.html").write_text(doc.to_html(base_dir=tmp, title=title))
        if run_config is not None:
            from ispo.config import save_run_config

            save_run_config(out, run_config, command="report", path=tmp / "config.yaml")
    return {"markdown": out / "report.md", "html": out / "report.html", "folder": out}


# ---------------------------------------------------------------------------------------------
# Small figures
# ---------------------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    try:
        import numpy as np

        if isinstance(v, np.generic):
            v = v.item()
    except ImportError:  # pragma: no cover
        pass
    return fmt(v)


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _bar_png(path: Path, labels: list[str], values: list[float], xlabel: str, title: str) -> str:
    fig = _new_figure(7.5, max(2.0, 0.35 * len(labels) + 1.2))
    ax = fig.add_subplot()
    ax.barh(range(len(labels)), values, color="#2c7fb8")
    ax.set_yticks(range(len(labels)), labels, fontsize="small")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return f"figures/{path.name}"


def _trials_png(path: Path, trials: list[dict], min_cosine: float | None) -> str:
    fig = _new_figure(7.5, 3.8)
    ax = fig.add_subplot()
    for feasible, colour, label in (
        (True, "#2ca02c", "feasible"),
        (False, "#bbbbbb", "infeasible"),
    ):
        pts = [t for t in trials if bool(t.get("feasible")) == feasible]
        if pts:
            ax.scatter(
                [t["number"] for t in pts],
                [t["cells_per_s"] for t in pts],
                color=colour,
                label=label,
                s=30,
            )
    ax.set_xlabel("trial")
    ax.set_ylabel("cells/s (steady state)")
    ax.set_title(
        "Tuning trials"
        + (f" (feasible: mean cosine >= {min_cosine})" if min_cosine is not None else "")
    )
    ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return f"figures/{path.name}"
