"""Tuning the fast path: the settings it searches (:mod:`ispo.tune.settings`) and the Optuna
search for the fastest setting that stays consistent with fp32 (:mod:`ispo.tune.search`)."""

from ispo.tune.search import SearchSpace, TuneResult, tune
from ispo.tune.settings import FastSettings, attention_backend, fast_path, prepare_encoder

__all__ = ["FastSettings", "SearchSpace", "TuneResult", "attention_backend", "fast_path",
           "prepare_encoder", "tune"]
