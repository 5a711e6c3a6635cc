"""Tuning the fast path: the settings it searches (:mod:`ispo.tuning.settings`) and the Optuna
search for the fastest setting that stays consistent with fp32 (:mod:`ispo.tuning.search`)."""

from ispo.tuning.search import SearchSpace, TuneResult, tune
from ispo.tuning.settings import FastSettings, attention_backend, fast_path, prepare_encoder

__all__ = [
    "FastSettings",
    "SearchSpace",
    "TuneResult",
    "attention_backend",
    "fast_path",
    "prepare_encoder",
    "tune",
]
