"""Find the fastest safe setting of the fast path with an Optuna search.

Objective: steady-state throughput (cells/s of full passes after a warm-up, median pass) of
:func:`ispo.embedding.embed.embed_cells` on the tuning cells (:mod:`ispo.tuning.measure`).
Constraints (:class:`ispo.tuning.options.Limits`): per-cell cosine to the fp32 fast result, mean
and worst cell; peak memory (GPU ``max_memory_allocated``, or process RSS on CPU) under the cap;
and, when the search is for ``ispo perturb`` (``isp_cells``), the largest |shift difference| of
a few cells' delete-all perturbation to fp32. A trial that runs out of memory, or whose
combination the device cannot run, is *pruned* with its reason; one whose results are not
finite is recorded as infeasible; neither is fatal.

The study lives in ``OUT/study.db`` (:mod:`ispo.tuning.study`): rerunning the same command
resumes it, and ``n_trials`` is the total wanted, so a larger number continues the same search.
The default setting is always the first trial tried (the speedup's reference); when the rest of
the space fits in the trial budget, every setting is tried; a setting the sampler proposes again
is answered from its first measurement, does not count, and an untried one is queued instead.
Outputs: :mod:`ispo.tuning.outputs`.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from ispo.errors import IspoError
from ispo.model.load import GeneformerModel
from ispo.settings import RunSettings
from ispo.tokens import TokenizedCells
from ispo.tuning import study as store
from ispo.tuning.measure import Pruned, Reference, measure, reference
from ispo.tuning.options import Limits, TuneOptions, finite_or_none
from ispo.tuning.outputs import summarise, track_summary, write_outputs
from ispo.tuning.space import SEARCHED, SearchSpace, params_settings, searched, setting_key, short

log = logging.getLogger(__name__)
_MIB = float(1 << 20)


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
        The loaded model (its device is where the search runs; its vocabulary is needed for
        the perturbation check).
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
    limits = Limits.of(opts, cap)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ident = store.identity(cells, model, base, data_source, space, opts, limits)
    study = store.open_study(out, ident, opts)
    log.info("tune: reference (fp32 fast path, device default batch size)")
    ref = reference(cells, model, base, opts.isp_cells)
    default = space.default_params(dev)
    if not study.trials:
        study.enqueue_trial(default)
    trial = _Trial(study, cells, model, base, space, ref, opts, limits, tracker)
    _search(trial, opts, dev)
    summary = summarise(
        study,
        limits=limits,
        space=space,
        identity=ident,
        default_setting=params_settings(default),
    )
    write_outputs(out, summary, run_config)
    track_summary(tracker, summary)
    best = summary["best"]
    return TuneResult(None if best is None else base.replace(**best["settings"]), summary, out)


def _study_folder(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise IspoError(f"--out {out} is a file: give a folder for the study")
    if not out.parent.is_dir():
        raise IspoError(f"output folder {out.parent} does not exist: create it first")
    out.mkdir(exist_ok=True)
    return out


def _search(trial: _Trial, opts: TuneOptions, dev: torch.device) -> None:
    """Run trials until ``n_trials`` measurements count, every setting has its answer, or the
    timeout has passed (the study stays resumable in every case)."""
    study, t0 = trial.study, time.monotonic()
    while (done := store.counted(study.trials)) < opts.n_trials:
        untried = _untried(trial.space, study.trials)
        if not untried:
            log.info("tune: every setting of the space has its answer (%d counted)", done)
            return
        if opts.timeout_s is not None and time.monotonic() - t0 > opts.timeout_s:
            log.info(
                "tune: timeout with %d of %d trials counted; rerun to go on", done, opts.n_trials
            )
            return
        if len(untried) <= opts.n_trials - done:  # the rest of the space fits in the budget
            for params in untried:
                study.enqueue_trial(params, skip_if_exists=True)
        trial.run_one()
        if dev.type == "cuda":
            gc.collect()


def _untried(space: SearchSpace, trials: list) -> list[dict[str, Any]]:
    """Trial parameters of the settings of the space that have no answer yet."""
    settled = store.settled(trials)
    return [p for p in space.grid() if setting_key(params_settings(p)) not in settled]


@dataclass
class _Trial:
    """One trial: ask the sampler for a setting, answer a repeat from its first measurement or
    measure it, and tell the study."""

    study: Any
    cells: TokenizedCells
    model: GeneformerModel
    base: RunSettings
    space: SearchSpace
    reference: Reference
    opts: TuneOptions
    limits: Limits
    tracker: Any

    def run_one(self) -> None:
        import optuna

        state = optuna.trial.TrialState
        trial = self.study.ask()
        settings = self.propose(trial)
        trial.set_user_attr("settings", searched(settings))
        same = store.settled(self.study.trials).get(setting_key(searched(settings)))
        if same is not None:  # the sampler proposed a setting already answered
            self.copy(trial, settings, same)
            return
        try:
            m = measure(
                self.cells,
                self.model,
                settings,
                reference=self.reference,
                repeats=self.opts.repeats,
                repeat_budget_s=self.opts.repeat_budget_s,
            )
        except Pruned as exc:
            trial.set_user_attr("pruned", str(exc))
            trial.set_user_attr("constraints", [1.0] * store.N_CONSTRAINTS)
            log.warning("trial %d %s: pruned: %s", trial.number, short(settings), exc)
            if self.tracker is not None:
                self.tracker.log({"trial": trial.number, "pruned": 1}, step=trial.number)
            self.study.tell(trial, state=state.PRUNED)
            return
        except KeyboardInterrupt:
            trial.set_user_attr(store.INTERRUPTED, True)
            self.study.tell(trial, state=state.FAIL)
            raise
        self.record(trial, settings, m)
        self.study.tell(trial, m["cells_per_s"])

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

    def copy(self, trial, settings: RunSettings, same) -> None:
        """Answer ``trial`` with the result of ``same`` (not counted) and queue an untried
        setting, so a sampler that keeps repeating itself still moves through the space."""
        import optuna

        state = optuna.trial.TrialState
        for k, v in same.user_attrs.items():
            if k not in ("settings", "copied_from", store.DIED):
                trial.set_user_attr(k, v)
        trial.set_user_attr("copied_from", same.number)
        log.info("trial %d %s: answered by trial %d", trial.number, short(settings), same.number)
        untried = _untried(self.space, self.study.trials)
        if untried:
            rng = np.random.default_rng([self.opts.seed, trial.number])
            self.study.enqueue_trial(untried[int(rng.integers(len(untried)))])
        if same.state == state.COMPLETE:
            self.study.tell(trial, same.value)
        else:
            self.study.tell(trial, state=same.state if same.state == state.PRUNED else state.FAIL)

    def record(self, trial, settings: RunSettings, m: dict[str, Any]) -> None:
        """Store a measurement's figures (no NaN), its constraints and verdict, and log it."""
        values, reason = self.limits.check(m)
        for k, v in {**m, "feasible": reason is None, "constraints": values}.items():
            trial.set_user_attr(k, finite_or_none(v))
        cos = "n/a" if m["cos_mean"] is None else f"{m['cos_mean']:.6f} (worst {m['cos_min']:.6f})"
        log.info(
            "trial %d %s: %.1f cells/s, cosine %s, peak %.0f MiB%s",
            trial.number,
            short(settings),
            m["cells_per_s"],
            cos,
            m["mem_peak_mib"],
            "" if reason is None else f" (infeasible: {reason})",
        )
        if self.tracker is not None:
            keys = ("cells_per_s", "cos_mean", "cos_min", "isp_max_shift_diff", "mem_peak_mib")
            values = {
                "trial": trial.number,
                **{k: m[k] for k in keys},
                "feasible": reason is None,
                **{f"setting/{k}": v for k, v in searched(settings).items()},
            }
            self.tracker.log(values, step=trial.number)


def _default_cap_mib(dev: torch.device) -> float:
    if dev.type == "cuda":
        return 0.9 * torch.cuda.get_device_properties(dev).total_memory / _MIB
    return 0.9 * psutil.virtual_memory().total / _MIB
