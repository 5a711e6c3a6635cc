"""The tuning section: the best setting of an ``ispo tune`` study, its speedup over the default
setting, the fastest trials and a plot of every trial (``summary.json``, ``best.yaml``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ispo.reporting.figures import Figures, trials_png
from ispo.reporting.render import fmt
from ispo.reporting.sections import Section, label, read_json

MARKERS = ("summary.json", "best.yaml", "study.db")
TOP_TRIALS = 15
HEADER = [
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


def finds(folder: Path) -> list[Path]:
    summary = folder / "summary.json"
    if summary.is_file():
        try:
            if json.loads(summary.read_text()).get("kind") == "tune":
                return [folder]
        except (json.JSONDecodeError, AttributeError):
            pass
    return [folder] if (folder / "best.yaml").is_file() or (folder / "study.db").is_file() else []


def _row(t: dict) -> list[Any]:
    """One trial's figures and settings, its reason (pruned, copied) as the note."""
    st = t.get("settings", {})
    copied = t.get("copied_from")
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
        t.get("reason") or (f"same setting as trial {copied}" if copied is not None else ""),
    ]


def section(folder: Path, figures: Figures) -> Section:
    path = folder / "summary.json"
    if not path.is_file():
        return Section("tune.md.j2", dict(label=label(folder), s=None))
    s = read_json(path)
    ident = s.get("identity", {})
    trials = s.get("trials", [])
    ranked = sorted(
        trials, key=lambda t: (t.get("cells_per_s") is None, -(t.get("cells_per_s") or 0.0))
    )
    done = [t for t in trials if t.get("cells_per_s") is not None]
    images = []
    if done:
        min_cosine = s.get("constraints", {}).get("min_cosine_mean")
        png = trials_png(figures.name(f"{label(folder)}-trials"), done, min_cosine)
        images.append(figures.image(png, "throughput of each trial (feasible in colour)"))
    best_yaml = folder / "best.yaml"
    context = dict(
        label=label(folder),
        s=s,
        ident=ident,
        c=s.get("constraints", {}),
        random_init=bool(ident.get("random_init")),
        best=s.get("best"),
        default=s.get("default_trial"),
        speedup=s.get("speedup_vs_default"),
        best_yaml=best_yaml.read_text() if best_yaml.is_file() else None,
        header=HEADER,
        rows=[_row(t) for t in ranked[:TOP_TRIALS]],
        n_trials=len(trials),
        shown=TOP_TRIALS,
        images=images,
    )
    return Section("tune.md.j2", context, bool(ident.get("random_init")))
