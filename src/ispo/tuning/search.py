"""Find the fastest safe setting of the fast path with an Optuna search.

Objective: steady-state throughput (cells/s of full passes after a warm-up, median pass) of
:func:`ispo.embedding.embed.embed_cells` on the tuning cells. Constraints: mean per-cell cosine to
the fp32 fast result of at least ``min_cosine`` (default 0.999), and peak memory (GPU
``max_memory_allocated``, or process RSS on CPU) under ``memory_cap_mib``. A trial that runs out
of memory, or whose combination the device cannot run (an attention kernel that does not exist
here, a compiler that fails), is *pruned* with its reason, never fatal.

The study lives in ``OUT/study.db`` (SQLite): rerunning the same command resumes it, and
``n_trials`` is the total wanted, so a larger number continues the same search. A trial cut
short by an interruption is run again. The default setting is always the first trial (the
speedup's reference); when the whole space fits in the trial budget, every setting is tried.

Outputs, rewritten after every call: ``best.yaml`` (a ``--config`` for ``ispo embed`` /
``ispo perturb``), ``summary.json``, ``trials.csv`` and ``config.yaml`` (this command's own
settings).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from ispo.embedding.embed import default_batch_tokens, embed_cells
from ispo.errors import IspoError
from ispo.io.write import atomic_write
from ispo.model import variants
from ispo.model.load import GeneformerModel
from ispo.provenance import device_name, versions
from ispo.runtime.batching import token_budget_batches
from ispo.runtime.pool import rowwise_cosine
from ispo.runtime.profiler import Profiler, synchronize
from ispo.settings import Attention, Precision, RunSettings
from ispo.tokens import TokenizedCells

log = logging.getLogger(__name__)
_MIB = float(1 << 20)
STUDY_NAME = "ispo-tune"
STUDY_FILE = "study.db"
BEST_FILE = "best.yaml"
SUMMARY_FILE = "summary.json"
TRIALS_FILE = "trials.csv"
#: The RunSettings fields the study searches (the others come from the run: layer, pool...).
SEARCHED = ("batch_tokens", "precision", "attention", "compile", "int8")
PRECISIONS = tuple(p.value for p in Precision if p != Precision.AUTO)
KERNELS = tuple(a.value for a in Attention)


@dataclass
class SearchSpace:
    """The candidate values of each setting (one value: fixed; the study searches the rest)."""

    batch_tokens: list[int] = field(default_factory=list)
    precision: list[str] = field(default_factory=list)
    attention: list[str] = field(default_factory=list)
    compile: list[bool] = field(default_factory=list)
    int8: list[bool] = field(default_factory=list)

    @classmethod
    def for_device(
        cls,
        device: torch.device,
        *,
        batch_tokens: list[int] | None = None,
        precision: list[str] | None = None,
        attention: list[str] | None = None,
        compile: str | list[bool] = "auto",
        int8: str | list[bool] = "auto",
    ) -> SearchSpace:
        """Fill unset choices with what is valid and sensible on ``device``.

        ``compile`` / ``int8``: ``auto`` (search on CUDA; on CPU compile is off, since inductor
        compiles for minutes, and int8 is searched when a backend exists), ``search``, ``on``,
        ``off``, or an explicit list of booleans.
        """
        cuda = device.type == "cuda"
        if batch_tokens is None:
            base = default_batch_tokens(device)
            batch_tokens = [base // 4, base // 2, base, base * 2, base * 4]
        if any(int(b) < 1 for b in batch_tokens):
            raise IspoError("--batch-tokens candidates must be positive")
        if precision is None:
            precision = ["fp32", "bf16"]
            if cuda:
                precision = ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
        _check_names(precision, PRECISIONS, "precision")
        if attention is None:  # those that run with a padding mask in some searched precision
            attention = [
                a for a in KERNELS if any(variants.attention_works(a, device, p) for p in precision)
            ]
        _check_names(attention, KERNELS, "attention backend")
        comp = _switch(compile, "compile", auto=[False, True] if cuda else [False])
        if True in comp and not variants.compile_available():
            raise IspoError(f"torch {torch.__version__} has no torch.compile: use --compile off")
        q8 = _switch(int8, "int8", auto=None)
        if q8 is None or True in q8:
            available = variants.int8_available(device)
            if q8 is None:
                q8 = [False, True] if available else [False]
            elif not available:
                raise IspoError(f"int8 is not available on {device_name(device)}: use --int8 off")
        return cls(
            sorted({int(b) for b in batch_tokens}),
            _unique(precision),
            _unique(attention),
            _unique(comp),
            _unique(q8),
        )

    def to_dict(self) -> dict[str, list]:
        return asdict(self)

    def grid(self) -> list[dict[str, Any]]:
        """Every setting of the space as trial parameters (no precision choice under int8)."""
        out = []
        for q8 in self.int8:
            for p in ["fp32"] if q8 else self.precision:
                for bt in self.batch_tokens:
                    for a in self.attention:
                        for c in self.compile:
                            params = {"int8": q8, "batch_tokens": bt, "attention": a, "compile": c}
                            out.append(params if q8 else {**params, "precision": p})
        return out


def _check_names(values: list[str], known: tuple[str, ...], what: str) -> None:
    bad = [v for v in values if v not in known]
    if bad:
        raise IspoError(f"unknown {what} {bad[0]!r}: choose from {', '.join(known)}")


def _unique(values: list) -> list:
    return list(dict.fromkeys(values))


def _switch(value: str | list[bool], name: str, *, auto: list[bool] | None) -> list[bool] | None:
    if isinstance(value, (list, tuple)):
        return [bool(v) for v in value]
    choices = {"auto": auto, "search": [False, True], "on": [True], "off": [False]}
    if value not in choices:
        raise IspoError(f"--{name} must be auto, search, on or off, not {value!r}")
    return choices[value]


def searched(settings: RunSettings) -> dict[str, Any]:
    """The searched part of ``settings`` as plain data (what a trial records and compares)."""
    d = settings.to_dict()
    return {k: d[k] for k in SEARCHED}


@dataclass(frozen=True)
class TuneOptions:
    """How the search runs.

    Attributes
    ----------
    n_trials
        Total finished trials wanted (completed or pruned, earlier calls included).
    min_cosine
        Least mean per-cell cosine to the fp32 fast result for a setting to count.
    memory_cap_mib
        Peak memory allowed (MiB); default 90 % of the GPU's memory, or of host RAM on CPU.
    repeats, repeat_budget_s
        Timed full passes per trial (at most ``repeats``, stopping early once the budget is
        used); throughput comes from the median pass.
    seed
        Seeds the sampler (with the same history, the same settings are proposed).
    timeout_s
        Stop starting new trials after this many seconds (the study stays resumable).
    """

    n_trials: int = 20
    min_cosine: float = 0.999
    memory_cap_mib: float | None = None
    repeats: int = 3
    repeat_budget_s: float = 30.0
    seed: int = 0
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise IspoError(f"--n-trials must be at least 1, got {self.n_trials}")
        if not 0.0 < self.min_cosine <= 1.0:
            raise IspoError(f"--min-cosine must be in (0, 1], got {self.min_cosine}")
        if self.repeats < 1:
            raise IspoError(f"--repeats must be at least 1, got {self.repeats}")


@dataclass
class TuneResult:
    """What :func:`tune` found: the best feasible setting (None if none) and the summary."""

    best: RunSettings | None
    summary: dict[str, Any]
    out: Path


def tune(
    cells: TokenizedCells,
    model: GeneformerModel,
    *,
    out: str | Path,
    space: SearchSpace | None = None,
    settings: RunSettings | None = None,
    options: TuneOptions | None = None,
    data_source: str = "in-memory",
    run_config: dict | None = None,
    tracker: Any = None,
    **option_values: Any,
) -> TuneResult:
    """Search the fast path's settings for the highest throughput that stays consistent.

    Parameters
    ----------
    cells
        The tokenized cells every trial embeds (keep them few: each trial runs at least two
        full passes).
    model
        The loaded model (its device is where the search runs).
    out
        Folder of the study (created if missing; an existing study there is resumed).
    space
        Candidate values (default :meth:`SearchSpace.for_device`).
    settings
        What every trial shares (embedding layer, pooling, layout); the searched fields are
        set by each trial.
    options
        How the search runs (:class:`TuneOptions`); its fields can also be given as keywords
        (``n_trials=3``), which override ``options``.
    data_source
        Where the cells came from (recorded, and checked when a study is resumed).
    run_config
        This command's settings, saved as ``OUT/config.yaml``.
    tracker
        An :mod:`ispo.tracking` tracker; each trial is logged to it.
    """
    try:
        import optuna
    except ImportError as exc:
        raise IspoError("ispo tune needs optuna: pip install 'ispo[tune]'") from exc
    opts = replace(options or TuneOptions(), **option_values)
    if len(cells) == 0:
        raise IspoError("no cells to tune on: none has a vocabulary gene")
    out = _study_folder(out)
    dev = model.device
    base = RunSettings(
        **{k: v for k, v in (settings or RunSettings()).to_dict().items() if k not in SEARCHED}
    )
    space = space or SearchSpace.for_device(dev)
    cap = opts.memory_cap_mib if opts.memory_cap_mib is not None else _default_cap_mib(dev)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    identity = _identity(cells, model, base, data_source)
    study = _open_study(out, identity, opts)
    log.info("tune: reference embedding (fp32 fast path, device default batch size)")
    reference = _embed(cells, model.with_settings(base))
    if not study.trials:
        study.enqueue_trial(_first_params(space, dev))
    objective = _Objective(study, cells, model, base, space, reference, opts, cap, tracker)
    _run_trials(study, objective, space, opts, dev)
    summary = summarise(
        study, min_cosine=opts.min_cosine, memory_cap_mib=cap, space=space, identity=identity
    )
    _write_outputs(out, summary, run_config)
    _track_summary(tracker, summary)
    best = summary["best"]
    return TuneResult(None if best is None else base.replace(**best["settings"]), summary, out)


def _study_folder(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise IspoError(f"--out {out} is a file: give a folder for the study")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _identity(
    cells: TokenizedCells, model: GeneformerModel, base: RunSettings, data_source: str
) -> dict[str, Any]:
    """What a resumed study must share with the one in the folder (data, model, embedding)."""
    return {
        "model": model.name,
        "random_init": bool(model.random_init),
        "seed": model.seed,
        "data": data_source,
        "n_cells": len(cells),
        "tokens_sha1": hashlib.sha1(np.ascontiguousarray(cells.tokens).tobytes()).hexdigest(),
        "device": device_name(model.device).split(" (")[0],
        "emb_layer": base.emb_layer,
        "pool": str(base.pool),
    }


def _open_study(out: Path, identity: dict, opts: TuneOptions):
    """The study in ``out`` (created, or resumed when its identity matches)."""
    import optuna

    with warnings.catch_warnings():  # constraints_func is marked experimental in some versions
        warnings.simplefilter("ignore")
        sampler = optuna.samplers.TPESampler(
            seed=opts.seed,
            constraints_func=_constraints,
            n_startup_trials=max(4, min(10, opts.n_trials // 3)),
        )
    study = optuna.create_study(
        storage=f"sqlite:///{(out / STUDY_FILE).resolve()}",
        study_name=STUDY_NAME,
        direction="maximize",
        sampler=sampler,
        load_if_exists=True,
    )
    old = study.user_attrs.get("identity")
    if old is None:
        study.set_user_attr("identity", identity)
        study.set_user_attr("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    elif old != identity:
        diff = [k for k in identity if old.get(k) != identity[k]]
        raise IspoError(
            f"{out} holds a study of a different run ({', '.join(diff)} differ): "
            "use another --out, or the same data, model and options to resume it"
        )
    _requeue_interrupted(study)
    return study


def _first_params(space: SearchSpace, dev: torch.device) -> dict[str, Any]:
    """The default setting (the speedup's reference), as near as the space allows."""
    return {
        "batch_tokens": _closest(space.batch_tokens, default_batch_tokens(dev)),
        "precision": "fp32" if "fp32" in space.precision else space.precision[0],
        "attention": "default" if "default" in space.attention else space.attention[0],
        "compile": False if False in space.compile else space.compile[0],
        "int8": False if False in space.int8 else space.int8[0],
    }


def _run_trials(study, objective, space: SearchSpace, opts: TuneOptions, dev) -> None:
    remaining = opts.n_trials - _n_finished(study)
    grid = space.grid()
    if 0 < len(grid) <= remaining:  # the whole space fits in the budget: try every setting once
        for params in grid:
            study.enqueue_trial(params, skip_if_exists=True)
    if remaining > 0:
        log.info("tune: %d trial(s) to run (%d finished before)", remaining, _n_finished(study))
        study.optimize(
            objective, n_trials=remaining, timeout=opts.timeout_s, gc_after_trial=dev.type == "cuda"
        )
    else:
        log.info(
            "tune: study already has %d finished trials (asked for %d); rewriting outputs",
            _n_finished(study),
            opts.n_trials,
        )


@dataclass
class _Objective:
    """One trial: propose a setting, reuse an identical finished trial or measure it, record."""

    study: Any
    cells: TokenizedCells
    model: GeneformerModel
    base: RunSettings
    space: SearchSpace
    reference: np.ndarray
    opts: TuneOptions
    cap: float | None
    tracker: Any

    def __call__(self, trial) -> float:
        settings = self.propose(trial)
        trial.set_user_attr("settings", searched(settings))
        same = _finished_with(self.study, settings, trial.number)
        if same is not None:  # the sampler proposed a setting already measured: reuse it
            return self.reuse(trial, settings, same)
        try:
            m = measure(
                self.cells,
                self.model,
                settings,
                reference=self.reference,
                repeats=self.opts.repeats,
                repeat_budget_s=self.opts.repeat_budget_s,
            )
        except _Pruned as exc:
            import optuna

            trial.set_user_attr("pruned", str(exc))
            log.warning("trial %d %s: pruned: %s", trial.number, _short(settings), exc)
            if self.tracker is not None:
                self.tracker.log({"trial": trial.number, "pruned": 1}, step=trial.number)
            raise optuna.TrialPruned(str(exc)) from exc
        self.record(trial, settings, m)
        return m["cells_per_s"]

    def propose(self, trial) -> RunSettings:
        space = self.space
        int8 = bool(trial.suggest_categorical("int8", space.int8))
        return self.base.replace(
            precision="fp32" if int8 else trial.suggest_categorical("precision", space.precision),
            batch_tokens=int(trial.suggest_categorical("batch_tokens", space.batch_tokens)),
            attention=trial.suggest_categorical("attention", space.attention),
            compile=bool(trial.suggest_categorical("compile", space.compile)),
            int8=int8,
        )

    def reuse(self, trial, settings: RunSettings, same) -> float:
        import optuna

        for k, v in same.user_attrs.items():
            if k not in ("settings", "copied_from"):
                trial.set_user_attr(k, v)
        trial.set_user_attr("copied_from", same.number)
        log.info(
            "trial %d %s: measured in trial %d already, reused",
            trial.number,
            _short(settings),
            same.number,
        )
        if same.state == optuna.trial.TrialState.PRUNED:
            raise optuna.TrialPruned(same.user_attrs.get("pruned", "pruned"))
        return float(same.value)

    def record(self, trial, settings: RunSettings, m: dict[str, Any]) -> None:
        cap, min_cosine = self.cap, self.opts.min_cosine
        feasible = m["cos_mean"] >= min_cosine and (cap is None or m["mem_peak_mib"] <= cap)
        for k, v in {**m, "feasible": feasible}.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr(
            "constraints", [min_cosine - m["cos_mean"], (m["mem_peak_mib"] - cap) if cap else -1.0]
        )
        log.info(
            "trial %d %s: %.1f cells/s, cos mean %.6f, peak %.0f MiB%s",
            trial.number,
            _short(settings),
            m["cells_per_s"],
            m["cos_mean"],
            m["mem_peak_mib"],
            "" if feasible else " (infeasible)",
        )
        if self.tracker is not None:
            keys = ("cells_per_s", "cos_mean", "cos_min", "mem_peak_mib")
            values = {
                "trial": trial.number,
                **{k: m[k] for k in keys},
                "feasible": feasible,
                **{f"setting/{k}": v for k, v in searched(settings).items()},
            }
            self.tracker.log(values, step=trial.number)


def _track_summary(tracker: Any, summary: dict[str, Any]) -> None:
    if tracker is None:
        return
    b = summary["best"]
    tracker.summary(
        {
            "best_cells_per_s": b and b["cells_per_s"],
            "speedup_vs_default": summary["speedup_vs_default"],
            "n_trials": summary["n_trials"],
        }
    )


class _Pruned(Exception):
    """The trial cannot run here (out of memory, missing kernel or compiler)."""


def _embed(cells: TokenizedCells, model: GeneformerModel) -> np.ndarray:
    """The fast path's embeddings of ``cells`` with the model's own settings."""
    s = model.settings
    return embed_cells(
        cells,
        model,
        method="fast",
        precision=str(s.precision),
        emb_layer=s.emb_layer,
        pool_mode=str(s.pool),
        batch_tokens=s.batch_tokens,
        layout=str(s.layout),
    )


def measure(
    cells: TokenizedCells,
    model: GeneformerModel,
    settings: RunSettings,
    *,
    reference: np.ndarray,
    repeats: int = 3,
    repeat_budget_s: float = 30.0,
) -> dict[str, Any]:
    """Throughput, consistency and peak memory of one setting (raises _Pruned when it cannot run).

    The setting's encoder is built once, into a cache dropped after the trial. Warm-up is the
    first batch (a full pass when compiled: it compiles per shape), then up to ``repeats``
    timed full passes; throughput is from the median pass.
    """
    dev = model.device
    times: list[float] = []
    try:
        trial = model.with_settings(settings, own_cache=True)
        with Profiler(device=dev) as prof:
            t0 = time.perf_counter()
            desc = trial.built_encoder(trial.layers_for(settings.emb_layer)).description
            budget = settings.batch_tokens or default_batch_tokens(dev)
            first = token_budget_batches(cells.lengths, budget)[0]
            _embed(cells if settings.compile else cells.subset(first), trial)
            synchronize(dev)
            warmup = time.perf_counter() - t0
            prof.mark_steady()
            while True:
                t = time.perf_counter()
                emb = _embed(cells, trial)
                synchronize(dev)
                times.append(time.perf_counter() - t)
                if len(times) >= repeats or sum(times) + times[-1] > repeat_budget_s:
                    break
    except IspoError as exc:
        raise _Pruned(str(exc)) from exc
    except Exception as exc:  # OOM, no kernel for this combination, compiler failure...
        _free(dev)
        raise _Pruned(_reason(exc)) from exc
    finally:
        trial = None
    _free(dev)
    return _figures(cells, emb, reference, times, warmup, prof.stats, dev) | {"backend": desc}


def _figures(cells, emb, reference, times, warmup, stats, dev) -> dict[str, Any]:
    """A trial's plain-data figures from its embeddings, pass times and profile."""
    mem = stats.gpu_mem_peak_bytes if stats.gpu_mem_peak_bytes is not None else stats.rss_peak_bytes
    cos = rowwise_cosine(emb, reference)
    t = float(np.median(times))
    return {
        "cells_per_s": len(cells) / t,
        "tokens_per_s": int(cells.lengths.sum()) / t,
        "time_s": t,
        "time_s_passes": times,
        "warmup_s": warmup,
        "cos_mean": float(cos.mean()),
        "cos_min": float(cos.min()),
        "max_abs_diff": float(np.abs(emb - reference).max()),
        "mem_peak_mib": mem / _MIB,
        "memory_kind": "gpu" if dev.type == "cuda" else "rss",
    }


def _trial_row(t, min_cosine: float, cap: float | None) -> dict[str, Any]:
    """One trial of the study as a plain-data row of the summary."""
    import optuna

    a = t.user_attrs
    cos, mem = a.get("cos_mean"), a.get("mem_peak_mib")
    complete = t.state == optuna.trial.TrialState.COMPLETE
    feasible = (
        complete
        and cos is not None
        and cos >= min_cosine
        and (cap is None or (mem is not None and mem <= cap))
    )
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "cells_per_s": t.value if complete else None,
        "tokens_per_s": a.get("tokens_per_s"),
        "cos_mean": cos,
        "cos_min": a.get("cos_min"),
        "mem_peak_mib": mem,
        "feasible": feasible,
        "reason": a.get("pruned") or _infeasible_reason(cos, mem, min_cosine, cap, t.state),
        "copied_from": a.get("copied_from"),
        "settings": a.get("settings") or dict(t.params),
    }


def summarise(
    study,
    *,
    min_cosine: float,
    memory_cap_mib: float | None,
    space: SearchSpace,
    identity: dict,
) -> dict[str, Any]:
    """Plain-data summary of a study: every trial, the best feasible one, the speedup."""
    rows = [_trial_row(t, min_cosine, memory_cap_mib) for t in study.trials]
    feasible = [r for r in rows if r["feasible"]]
    best = max(feasible, key=lambda r: r["cells_per_s"], default=None)
    default = next((r for r in rows if r["state"] == "complete" and r["number"] == 0), None)
    speedup = (
        best["cells_per_s"] / default["cells_per_s"]
        if best is not None and default is not None and default["cells_per_s"]
        else None
    )
    return {
        "kind": "tune",
        "objective": "steady-state cells/s of the fast path (median full pass after warm-up)",
        "constraints": {
            "min_cosine_mean": min_cosine,
            "memory_cap_mib": memory_cap_mib,
            "reference": "fp32 fast path, device default batch size",
        },
        "identity": identity,
        "space": space.to_dict(),
        "n_trials": len(rows),
        "n_complete": sum(r["state"] == "complete" for r in rows),
        "n_pruned": sum(r["state"] == "pruned" for r in rows),
        "n_feasible": len(feasible),
        "best": best,
        "default_trial": default,
        "speedup_vs_default": speedup,
        "trials": rows,
        "versions": versions(),
    }


def best_config_yaml(summary: dict) -> str:
    """``best.yaml``: the best setting as a ``--config`` for ``ispo embed`` and ``ispo perturb``."""
    import yaml

    best = summary["best"]
    ident = summary["identity"]
    if best is None:
        return (
            "# ispo tune: no setting met the constraints (mean cosine >= "
            f"{summary['constraints']['min_cosine_mean']}, memory cap); see summary.json\n"
            "{}\n"
        )
    s = best["settings"]
    keys = {
        "precision": s["precision"],
        "batch-tokens": s["batch_tokens"],
        "attention": s["attention"],
        "compile": s["compile"],
        "int8": s["int8"],
    }
    speed = summary.get("speedup_vs_default")
    header = (
        f"# ispo tune: fastest setting with mean cosine >= "
        f"{summary['constraints']['min_cosine_mean']} to the fp32 result\n"
        f"# measured: {best['cells_per_s']:.1f} cells/s"
        + (f" ({speed:.2f}x the default setting)" if speed else "")
        + f", mean cosine {best['cos_mean']:.6f}, peak memory {best['mem_peak_mib']:.0f} MiB\n"
        f"# on {ident['device']} with model {ident['model']}"
        + (" (random weights)" if ident.get("random_init") else "")
        + "\n"
        "# use: ispo embed INPUT --out OUT --model M --config best.yaml  (also ispo perturb)\n"
    )
    return header + yaml.safe_dump(
        {"embed": {"method": "fast", **keys}, "perturb": keys}, sort_keys=False
    )


def _write_outputs(out: Path, summary: dict, run_config: dict | None) -> None:
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
        "mem_peak_mib",
        "feasible",
        "batch_tokens",
        "precision",
        "attention",
        "compile",
        "int8",
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


def _constraints(trial) -> list[float]:
    """Optuna constraint values (feasible when <= 0), stored by the objective."""
    return list(trial.user_attrs.get("constraints", [0.0, 0.0]))


def _n_finished(study) -> int:
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(t.state in done for t in study.trials)


def _requeue_interrupted(study) -> None:
    """Mark trials left running by a stopped process as failed and queue their settings again."""
    import optuna

    requeued = set(study.user_attrs.get("requeued", []))
    for t in study.trials:
        if t.state == optuna.trial.TrialState.RUNNING:
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        if (
            t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL)
            and t.number not in requeued
            and t.params
        ):
            study.enqueue_trial(dict(t.params))
            requeued.add(t.number)
            log.info("tune: trial %d was interrupted; queued again", t.number)
    study.set_user_attr("requeued", sorted(requeued))


def _finished_with(study, settings: RunSettings, number: int):
    import optuna

    want = searched(settings)
    for t in study.trials:
        if (
            t.number != number
            and t.user_attrs.get("settings") == want
            and t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        ):
            return t
    return None


def _infeasible_reason(cos, mem, min_cosine, cap, state) -> str | None:
    if state.name != "COMPLETE":
        return None
    if cos is not None and cos < min_cosine:
        return f"mean cosine {cos:.6f} < {min_cosine}"
    if cap is not None and mem is not None and mem > cap:
        return f"peak memory {mem:.0f} MiB > cap {cap:.0f} MiB"
    return None


def _default_cap_mib(dev: torch.device) -> float:
    if dev.type == "cuda":
        return 0.9 * torch.cuda.get_device_properties(dev).total_memory / _MIB
    return 0.9 * psutil.virtual_memory().total / _MIB


def _closest(values: list[int], target: int) -> int:
    return min(values, key=lambda v: (abs(math.log(v / target)), v))


def _short(s: RunSettings) -> str:
    extra = "".join([" compile" if s.compile else "", " int8" if s.int8 else ""])
    return f"[{s.precision} bt={s.batch_tokens} attn={s.attention}{extra}]"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    if (
        isinstance(exc, (MemoryError, getattr(torch.cuda, "OutOfMemoryError", MemoryError)))
        or "out of memory" in text.lower()
        or "can't allocate memory" in text.lower()
    ):
        return f"out of memory: {text}"
    return f"{type(exc).__name__}: {text}"


def _free(dev: torch.device) -> None:
    import gc

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
