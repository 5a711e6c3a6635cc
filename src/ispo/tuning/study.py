"""The study on disk: its identity, opening and resuming it, and what each trial left behind.

The study lives in ``OUT/study.db`` (SQLite). Its identity is everything that changes a
measurement or its verdict (data, model, device, layer and pooling, search space, repeats,
thresholds, memory cap, the perturbation check): a resume with any of them changed is refused,
naming what changed, since its trials would mix two kinds of measurement.

A trial found still running when the study is opened was cut short by a process that died (the
out-of-memory killer, a segfault, a CUDA abort): it is marked failed and its setting queued
once more; a setting that dies twice is not retried. A trial stopped by Ctrl-C is marked
failed as interrupted and queued again (it says nothing about the setting).
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ispo.errors import IspoError
from ispo.model.load import GeneformerModel
from ispo.provenance import device_name
from ispo.settings import RunSettings
from ispo.tokens import TokenizedCells
from ispo.tuning.measure import OOM_REASON
from ispo.tuning.options import Limits, TuneOptions, finite_or_none
from ispo.tuning.space import SearchSpace, params_settings, setting_key

log = logging.getLogger(__name__)
STUDY_NAME = "ispo-tune"
STUDY_FILE = "study.db"
#: Why a trial ended without a value, kept in its user attributes.
DIED = "died"
INTERRUPTED = "interrupted"
DIED_REASON = "the process died while measuring this setting"
N_CONSTRAINTS = 4


def identity(
    cells: TokenizedCells,
    model: GeneformerModel,
    base: RunSettings,
    data_source: str,
    space: SearchSpace,
    opts: TuneOptions,
    limits: Limits,
) -> dict[str, Any]:
    """What a resumed study must share with the one in the folder: every input of a
    measurement (data, model, device, embedding, space, repeats) and of its verdict (limits)."""
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
        "layout": str(base.layout),
        "space": space.to_dict(),
        "repeats": opts.repeats,
        "repeat_budget_s": opts.repeat_budget_s,
        **{k: v for k, v in limits.to_dict().items() if k != "reference"},
    }


def open_study(out: Path, ident: dict[str, Any], opts: TuneOptions):
    """The study in ``out``: created, or resumed when its identity matches (refused in one
    line naming what differs otherwise), with its stopped trials settled."""
    import optuna

    with warnings.catch_warnings():  # constraints_func is marked experimental in some versions
        warnings.simplefilter("ignore")
        sampler = optuna.samplers.TPESampler(
            seed=opts.seed,
            constraints_func=constraints,
            n_startup_trials=max(4, min(10, opts.n_trials // 3)),
        )
    storage = optuna.storages.RDBStorage(f"sqlite:///{(out / STUDY_FILE).resolve()}")
    study = optuna.create_study(
        storage=storage,
        study_name=STUDY_NAME,
        direction="maximize",
        sampler=sampler,
        load_if_exists=True,
    )
    old = study.user_attrs.get("identity")
    if old is None:
        study.set_user_attr("identity", ident)
        study.set_user_attr("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    elif old != ident:
        raise IspoError(
            f"{out} holds a study of a different run ({_differences(old, ident)}): use another "
            "--out, or the same data, model and options to resume it"
        )
    _settle_stopped(study, storage)
    return study


def _differences(old: dict, new: dict) -> str:
    """``key old -> new`` for each identity entry that changed (``space.precision`` for a
    nested one; long values shortened)."""

    def flat(d: dict) -> dict:
        out = {}
        for k, v in d.items():
            out |= {f"{k}.{i}": w for i, w in v.items()} if isinstance(v, dict) else {k: v}
        return out

    def short(v: Any) -> str:
        text = str(v)
        return text if len(text) <= 40 else text[:12] + "..."

    old, new = flat(old), flat(new)
    keys = [k for k in dict.fromkeys([*new, *old]) if old.get(k) != new.get(k)]
    return "; ".join(f"{k} {short(old.get(k))} -> {short(new.get(k))}" for k in keys)


def constraints(trial) -> list[float]:
    """Optuna constraint values (feasible when all are <= 0), stored by the objective; a trial
    without them (pruned, failed) is infeasible; never NaN (optuna refuses NaN)."""
    values = finite_or_none(list(trial.user_attrs.get("constraints") or []))
    if len(values) != N_CONSTRAINTS or None in values:
        return [1.0] * N_CONSTRAINTS
    return values


def _settle_stopped(study, storage) -> None:
    """Mark trials a stopped process left running as failed (died), and queue again the
    settings of interrupted trials and of those that died once (each trial queued once)."""
    import optuna

    state = optuna.trial.TrialState
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    for t in study.trials:
        if t.state == state.RUNNING:
            tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(tid, DIED, True)
            storage.set_trial_state_values(tid, state.FAIL)
            log.warning("tune: trial %d %s: %s", t.number, trial_setting(t), DIED_REASON)
    trials = study.trials
    deaths = died_count(trials)
    requeued = set(study.user_attrs.get("requeued", []))
    done = set(settled(trials))
    for t in trials:
        setting = trial_setting(t)
        if t.state != state.FAIL or t.number in requeued or not t.params or setting is None:
            continue
        key = setting_key(setting)
        retry = t.user_attrs.get(INTERRUPTED) or (t.user_attrs.get(DIED) and deaths[key] < 2)
        if retry and key not in done:
            study.enqueue_trial(dict(t.params))
            log.info("tune: trial %d was cut short; its setting is queued again", t.number)
        requeued.add(t.number)
    study.set_user_attr("requeued", sorted(requeued))


def trial_setting(t) -> dict[str, Any] | None:
    """The setting a trial measured (its searched settings), None when it never got one."""
    if "settings" in t.user_attrs:
        return t.user_attrs["settings"]
    try:
        return params_settings(t.params)
    except KeyError:  # asked but stopped before every parameter was suggested
        return None


def died_count(trials: list) -> dict[str, int]:
    """How many times each setting's process died while measuring it."""
    return _count_by_setting(trials, lambda t: bool(t.user_attrs.get(DIED)))


def oom_count(trials: list) -> dict[str, int]:
    """How many times each setting ran out of memory (pruned with that reason)."""
    return _count_by_setting(trials, _out_of_memory)


def _out_of_memory(t) -> bool:
    return str(t.user_attrs.get("pruned", "")).startswith(OOM_REASON)


def _count_by_setting(trials: list, hit) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        if hit(t) and t.user_attrs.get("copied_from") is None and trial_setting(t) is not None:
            key = setting_key(trial_setting(t))
            out[key] = out.get(key, 0) + 1
    return out


def settled(trials: list) -> dict[str, Any]:
    """Settings that have their answer, each with the trial that holds it: measured (complete
    or pruned), or dead (the process died on it twice: not retried). Copies are skipped.

    Running out of memory can be a passing state of the machine (another job held the
    memory), so a setting pruned for it is measured once more, like a death, and settled on
    the second time; every other prune (no kernel, refused option) is final."""
    import optuna

    state = optuna.trial.TrialState
    deaths, ooms = died_count(trials), oom_count(trials)
    out: dict[str, Any] = {}
    for t in trials:
        setting = trial_setting(t)
        if setting is None or t.user_attrs.get("copied_from") is not None:
            continue
        key = setting_key(setting)
        pruned = t.state == state.PRUNED and (not _out_of_memory(t) or ooms[key] >= 2)
        if t.state == state.COMPLETE or pruned or (t.user_attrs.get(DIED) and deaths[key] >= 2):
            out.setdefault(key, t)
    return out


def counted(trials: list) -> int:
    """Measurements that count toward ``n_trials``: completed, pruned and failed trials, but
    not copies of a setting already measured nor trials interrupted by the user."""
    import optuna

    state = optuna.trial.TrialState
    return sum(
        t.state in (state.COMPLETE, state.PRUNED, state.FAIL)
        and t.user_attrs.get("copied_from") is None
        and not t.user_attrs.get(INTERRUPTED)
        for t in trials
    )
