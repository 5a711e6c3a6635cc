"""Fine-tuning: a cell classifier trained on the fast encoder and saved in the Hugging Face
layout (``ispo finetune``, :func:`ispo.finetune`).

Names are imported on first use, so the CLI can read :class:`TrainSettings` (its flags'
defaults) without importing torch: ``ispo --help`` stays under a second.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "CellClassifier": "ispo.training.classifier",
    "DataOptions": "ispo.training.run",
    "finetune": "ispo.training.run",
    "Schedule": "ispo.training.settings",
    "TrainSettings": "ispo.training.settings",
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
