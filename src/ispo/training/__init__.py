"""Fine-tuning: a cell classifier trained on the fast encoder and saved in the Hugging Face
layout (``ispo finetune``, :func:`ispo.finetune`).

Names are imported on first use, so the CLI can read :class:`TrainSettings` (its flags'
defaults) without importing torch: ``ispo --help`` stays under a second.
"""

from __future__ import annotations

from ispo.lazy import lazy_exports

_EXPORTS = {
    "CellClassifier": "ispo.training.classifier",
    "DataOptions": "ispo.training.run",
    "finetune": "ispo.training.run",
    "Schedule": "ispo.training.settings",
    "TrainSettings": "ispo.training.settings",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
