"""Tuning the fast path: an Optuna search over :class:`ispo.settings.RunSettings` for the fastest
setting that stays consistent with fp32 (:mod:`ispo.tuning.search`)."""

from ispo.tuning.search import SearchSpace, TuneOptions, TuneResult, tune

__all__ = ["SearchSpace", "TuneOptions", "TuneResult", "tune"]
