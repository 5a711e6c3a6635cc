"""What a study leaves in its folder, rewritten after every call: ``summary.json`` (every trial,
the best feasible one, the speedup over the default setting), ``trials.csv``, ``best.yaml`` (a
``--config`` for ``ispo embed``, and for ``ispo perturb`` when the search checked perturbations)
and ``config.yaml`` (this command's own settings)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ispo.io.write import atomic_write
from ispo.provenance import versions
from ispo.tuning.options import Limits, finite_or_none
from ispo.tuning.space import SearchSpace, setting_key
from ispo.tuning.study import (
    DIED,
    DIED_REASON,
    INTERRUPTED,
    counted,
    died_count,
    trial_setting,
)

BEST_FILE = "best.yaml"
SUMMARY_FILE = "summary.json"
TRIALS_FILE = "trials.csv"
BUDGET = (
    "n_trials counts measurements started: complete, pruned and failed trials (a process that "
    "died mid-trial leaves a failed one); a setting proposed again is answered from its first "
    "measurement (a copy) and, like a trial interrupted with Ctrl-C, does not count"
)
_FIGURES = (
    "tokens_per_s",
    "cos_mean",
    "cos_min",
    "max_abs_diff",
    "isp_max_shift_diff",
    "mem_peak_mib",
)


def trial_row(t, limits: Limits, deaths: dict[str, int]) -> dict[str, Any]:
    """One trial of the study as a plain-data row of the summary (strict JSON: no NaN)."""
    a = t.user_attrs
    state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(
        t.state.name, t.state.name.lower()
    )
    reason, feasible = None, False
    if state == "complete":
        reason = limits.check(a)[1] if "cos_mean" in a else "no figures recorded"
        feasible = reason is None
    elif state == "pruned":
        reason = a.get("pruned") or "pruned"
    elif a.get(INTERRUPTED):
        reason = "interrupted (Ctrl-C); queued again"
    elif a.get(DIED) or a.get("copied_from") is not None:
        setting = trial_setting(t)
        n = deaths.get(setting_key(setting), 0) if setting is not None else 0
        reason = DIED_REASON + (f" ({n} times: not retried)" if n >= 2 else " (retried once)")
    return {
        "number": t.number,
        "state": state,
        "cells_per_s": finite_or_none(t.value) if state == "complete" else None,
        **{k: finite_or_none(a.get(k)) for k in _FIGURES},
        "feasible": feasible,
        "reason": reason,
        "copied_from": a.get("copied_from"),
        "settings": trial_setting(t) or dict(t.params),
    }


def summarise(
    study,
    *,
    limits: Limits,
    space: SearchSpace,
    identity: dict,
    default_setting: dict[str, Any],
) -> dict[str, Any]:
    """Plain-data summary of a study: every trial, the best feasible one, and the speedup over
    the default setting (wherever in the study it was measured)."""
    trials = study.trials
    rows = [trial_row(t, limits, died_count(trials)) for t in trials]
    own = [r for r in rows if r["copied_from"] is None]
    interrupted = sum(bool(t.user_attrs.get(INTERRUPTED)) for t in trials)
    feasible = [r for r in own if r["feasible"]]
    best = max(feasible, key=lambda r: r["cells_per_s"], default=None)
    default = next(
        (r for r in own if r["state"] == "complete" and r["settings"] == default_setting), None
    )
    speedup = (
        best["cells_per_s"] / default["cells_per_s"]
        if best is not None and default is not None and default["cells_per_s"]
        else None
    )
    return {
        "kind": "tune",
        "objective": "steady-state cells/s of the fast path (median full pass after warm-up)",
        "constraints": limits.to_dict(),
        "budget": BUDGET,
        "identity": identity,
        "space": space.to_dict(),
        "n_trials": len(rows),
        "n_measured": counted(trials),
        "n_complete": sum(r["state"] == "complete" for r in own),
        "n_pruned": sum(r["state"] == "pruned" for r in own),
        "n_failed": sum(r["state"] == "failed" for r in own) - interrupted,
        "n_interrupted": interrupted,
        "n_copies": len(rows) - len(own),
        "n_feasible": len(feasible),
        "best": best,
        "default_setting": default_setting,
        "default_trial": default,
        "speedup_vs_default": speedup,
        "trials": rows,
        "versions": versions(),
    }


def best_config_yaml(summary: dict) -> str:
    """``best.yaml``: the best setting as a ``--config`` for ``ispo embed``, and for
    ``ispo perturb`` only when the search checked the perturbation outputs too."""
    import yaml

    best, c = summary["best"], summary["constraints"]
    ident = summary["identity"]
    limits = (
        f"mean cosine >= {c['min_cosine_mean']}, worst cell >= {c['min_cosine_cell']} to the "
        "fp32 result"
        + (
            f", ISP max |shift difference| <= {c['isp_max_shift_diff']:g} on "
            f"{c['isp_cells']} cell(s)' delete-all"
            if c.get("isp_cells")
            else ""
        )
    )
    if best is None:
        return f"# ispo tune: no setting met the constraints ({limits}, memory cap)\n{{}}\n"
    s = best["settings"]
    keys = {
        "precision": s["precision"],
        "batch-tokens": s["batch_tokens"],
        "attention": s["attention"],
        "compile": s["compile"],
        "int8": s["int8"],
    }
    speed = summary.get("speedup_vs_default")
    use = (
        "# use: ispo embed INPUT --out OUT --model M --config best.yaml  (also ispo perturb)\n"
        if c.get("isp_cells")
        else "# use: ispo embed INPUT --out OUT --model M --config best.yaml\n"
        "# not checked for ispo perturb (no perturb section): tune with --isp-cells N for that\n"
    )
    header = (
        f"# ispo tune: fastest setting with {limits}\n"
        f"# measured: {best['cells_per_s']:.1f} cells/s"
        + (f" ({speed:.2f}x the default setting)" if speed else "")
        + f", mean cosine {best['cos_mean']:.6f}, worst cell {best['cos_min']:.6f}"
        + (
            f", ISP max |shift difference| {best['isp_max_shift_diff']:.2e}"
            if best.get("isp_max_shift_diff") is not None
            else ""
        )
        + f", peak memory {best['mem_peak_mib']:.0f} MiB\n"
        f"# on {ident['device']} with model {ident['model']}"
        + (" (random weights)" if ident.get("random_init") else "")
        + "\n"
        + use
    )
    sections = {"embed": {"method": "fast", **keys}}
    if c.get("isp_cells"):
        sections["perturb"] = keys
    return header + yaml.safe_dump(sections, sort_keys=False)


def write_outputs(out: Path, summary: dict, run_config: dict | None) -> None:
    """summary.json, best.yaml, trials.csv and config.yaml, each written whole or not at all."""
    atomic_write(out / SUMMARY_FILE, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    atomic_write(out / BEST_FILE, best_config_yaml(summary))
    buf = io.StringIO()
    cols = [
        "number",
        "state",
        "cells_per_s",
        "tokens_per_s",
        "cos_mean",
        "cos_min",
        "isp_max_shift_diff",
        "mem_peak_mib",
        "feasible",
        "batch_tokens",
        "precision",
        "attention",
        "compile",
        "int8",
        "copied_from",
        "reason",
    ]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in summary["trials"]:
        w.writerow({k: "" if v is None else v for k, v in {**r, **r["settings"]}.items()})
    atomic_write(out / TRIALS_FILE, buf.getvalue())
    if run_config is not None:
        from ispo.config import save_run_config

        save_run_config(out, run_config, command="tune")


def track_summary(tracker: Any, summary: dict[str, Any]) -> None:
    """The study's headline figures as the tracker's run summary."""
    if tracker is None:
        return
    b = summary["best"]
    tracker.summary(
        {
            "best_cells_per_s": b and b["cells_per_s"],
            "speedup_vs_default": summary["speedup_vs_default"],
            "n_trials": summary["n_measured"],
        }
    )
