"""Helpers of the tuning tests (a plain module, imported as ``from tune_helpers import ...``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna

from ispo.tuning import SearchSpace


def space(**choices) -> SearchSpace:
    """A search space over fp32 only, token budget 8192, default attention, unless given."""
    base = {
        "batch_tokens": [8192],
        "precision": ["fp32"],
        "attention": ["default"],
        "compile": [False],
        "int8": [False],
    }
    return SearchSpace(**(base | choices))


def study_trials(out: Path) -> list:
    """The trials of the study in ``out``, read with optuna alone."""
    return optuna.load_study(study_name="ispo-tune", storage=f"sqlite:///{out / 'study.db'}").trials


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m ispo ARGS`` in a fresh process (it may be killed: that is the point)."""
    return subprocess.run(
        [sys.executable, "-m", "ispo", *args], env=env, capture_output=True, text=True, timeout=600
    )
