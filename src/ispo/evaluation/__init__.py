"""Embedding evaluation: label-separation metrics, embedding agreement checks and plots.

- :mod:`ispo.evaluation.metrics`: pure-array metrics (``evaluate_embedding``,
  ``embedding_consistency``);
- :mod:`ispo.evaluation.plots`: PNG figures (``plot_embedding``, ``plot_confusion``);
- :mod:`ispo.evaluation.run`: the AnnData-level ``evaluate`` (exported as ``ispo.evaluate``) and
  its result folder; :mod:`ispo.reporting.sections.evaluate`: its tables (``metrics.md``).

Names are imported on first use, so ``import ispo`` does not pay for scikit-learn and
matplotlib. (``ispo.evaluate`` is the function; reach the modules with
``from ispo.evaluation import ...`` or ``import ispo.evaluation.metrics``.)
"""

from __future__ import annotations

from ispo.lazy import lazy_exports

_EXPORTS = {
    "embedding_consistency": "ispo.evaluation.metrics",
    "evaluate_embedding": "ispo.evaluation.metrics",
    "plot_confusion": "ispo.evaluation.plots",
    "plot_embedding": "ispo.evaluation.plots",
    "evaluate": "ispo.evaluation.run",
    "write_evaluation": "ispo.evaluation.run",
    "evaluation_markdown": "ispo.reporting.sections.evaluate",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
