"""Tuning the fast path: an Optuna search over :class:`ispo.settings.RunSettings` for the fastest
setting that stays consistent with fp32.

One job a module: :mod:`~ispo.tuning.space` (what is searched), :mod:`~ispo.tuning.options`
(how the search runs and when a setting counts), :mod:`~ispo.tuning.measure` (one trial's
measurement against fp32), :mod:`~ispo.tuning.study` (the study on disk: identity, resume,
trials cut short), :mod:`~ispo.tuning.search` (the search loop, :func:`tune`) and
:mod:`~ispo.tuning.outputs` (summary.json, trials.csv, best.yaml).
"""

from ispo.tuning.options import TuneOptions
from ispo.tuning.search import TuneResult, tune
from ispo.tuning.space import SearchSpace

__all__ = ["SearchSpace", "TuneOptions", "TuneResult", "tune"]
