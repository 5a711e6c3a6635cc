"""Embedding evaluation: label-separation metrics, embedding agreement checks and plots.

- :mod:`ispo.evaluate.metrics`: pure-array metrics (``evaluate_embedding``,
  ``embedding_consistency``);
- :mod:`ispo.evaluate.plots`: PNG figures (``plot_embedding``, ``plot_confusion``);
- :mod:`ispo.evaluate.run`: the AnnData-level ``evaluate`` (exported as ``ispo.evaluate``) and
  its result folder; :mod:`ispo.evaluate.summary`: its tables.

Names are imported on first use, so ``import ispo`` does not pay for scikit-learn and
matplotlib. (``ispo.evaluate`` is the function; reach the modules with
``from ispo.evaluate import ...`` or ``import ispo.evaluate.metrics``.)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "embedding_consistency": "ispo.evaluate.metrics",
    "evaluate_embedding": "ispo.evaluate.metrics",
    "plot_confusion": "ispo.evaluate.plots",
    "plot_embedding": "ispo.evaluate.plots",
    "evaluate": "ispo.evaluate.run",
    "write_evaluation": "ispo.evaluate.run",
    "evaluation_document": "ispo.evaluate.summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
