"""The study on disk: what a resume must share with it, and trials cut short by a dying process
(a real SIGKILL through ``ISPO_FAULT=kill_trial_above_tokens``)."""

from __future__ import annotations

import json
import os
import re

import optuna
import pytest
from tune_helpers import run_cli, space, study_trials

from ispo.errors import IspoError
from ispo.tuning import tune

DEFAULT = {  # the default setting on a CPU for these spaces (budget nearest 16,384)
    "batch_tokens": 8192,
    "precision": "fp32",
    "attention": "default",
    "compile": False,
    "int8": False,
}


def test_a_trial_left_running_is_failed_retried_once_and_the_retry_is_the_baseline(
    cells, model, tmp_path
):
    """A process killed mid-trial leaves it RUNNING (made here with optuna's own ask()): the
    next call marks it failed, counts it, measures its setting once more, and the speedup is
    taken from that retry (the default setting measured as trial 1, not trial 0)."""
    out = tmp_path / "tune"
    out.mkdir()
    study = optuna.create_study(study_name="ispo-tune", storage=f"sqlite:///{out / 'study.db'}")
    two = space(batch_tokens=[4096, 8192])
    study.enqueue_trial(DEFAULT)
    choices = optuna.distributions.CategoricalDistribution
    assert study.ask({k: choices(v) for k, v in vars(two).items()}).params == DEFAULT
    res = tune(cells, model, out=out, n_trials=3, space=two, repeats=1)
    ts = study_trials(out)
    assert [t.state.name for t in ts] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert ts[1].params == ts[0].params  # the retry of the setting that died
    s = res.summary
    assert (s["n_measured"], s["n_failed"], s["n_complete"]) == (3, 1, 2)
    assert s["trials"][0]["reason"].startswith("the process died while measuring")
    assert s["default_trial"]["number"] == 1
    assert s["speedup_vs_default"] == pytest.approx(
        s["best"]["cells_per_s"] / s["trials"][1]["cells_per_s"]
    )


def test_a_setting_that_kills_the_process_twice_is_failed_for_good(tiny_model_dir, tmp_path):
    """The 8192-token setting kills its process (SIGKILL, as the OOM killer would) each time:
    after one retry it is failed for good, never queued again, and both failures count toward
    --n-trials; the study goes on with the other setting."""
    out = tmp_path / "tune"
    args = ["tune", "--data", "demo:4", "--model", str(tiny_model_dir), "--out", str(out)]
    args += ["--batch-tokens", "4096", "--batch-tokens", "8192", "--precision", "fp32"]
    args += ["--attention", "default", "--int8", "off", "--repeats", "1", "--n-trials", "3"]
    env = os.environ | {"ISPO_FAULT": "kill_trial_above_tokens:4096"}
    for _ in range(2):  # the default setting (8192) is tried first, then retried: killed twice
        assert run_cli(args, env).returncode == -9
    done = run_cli(args, env)
    assert done.returncode == 0, done.stderr
    assert "3 trials (1 complete, 0 pruned, 2 failed; 1 feasible)" in done.stdout
    s = json.loads((out / "summary.json").read_text())
    # 4096, queued with the rest of the space in the first call, runs before the retry
    assert [(t["state"], t["settings"]["batch_tokens"]) for t in s["trials"]] == [
        ("failed", 8192),
        ("complete", 4096),
        ("failed", 8192),
    ]
    assert s["trials"][0]["reason"].endswith("(2 times: not retried)")
    assert s["trials"][2]["reason"].endswith("(2 times: not retried)")
    assert s["best"]["settings"]["batch_tokens"] == 4096
    assert s["default_trial"] is None and s["speedup_vs_default"] is None  # it never ran
    # a later call, without the fault and with budget to spare, does not try 8192 again
    again = run_cli([*args[:-1], "6"], os.environ | {"ISPO_FAULT": ""})
    assert again.returncode == 0, again.stderr
    assert len(study_trials(out)) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"repeats": 2}, "repeats 1 -> 2"),
        ({"space": space(batch_tokens=[4096])}, "space.batch_tokens [8192] -> [4096]"),
        ({"min_cosine": 0.99}, "min_cosine_mean 0.999 -> 0.99"),
        ({"min_cosine_cell": 0.9}, "min_cosine_cell 0.995 -> 0.9"),
        ({"memory_cap_mib": 1e6}, "memory_cap_mib 100000.0 -> 1000000.0"),
        ({"isp_cells": 1}, "isp_cells 0 -> 1"),
    ],
)
def test_a_resume_that_would_measure_differently_is_refused(
    cells, model, tmp_path, change, message
):
    out = tmp_path / "tune"
    first = {"n_trials": 1, "space": space(), "repeats": 1, "memory_cap_mib": 1e5}
    tune(cells, model, out=out, **first)
    with pytest.raises(IspoError, match=re.escape(message)) as info:
        tune(cells, model, out=out, **(first | {"n_trials": 2} | change))
    assert "holds a study of a different run" in str(info.value)
    assert "\n" not in str(info.value)
    assert len(study_trials(out)) == 1  # nothing was added
