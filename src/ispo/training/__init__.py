"""Fine-tuning: a cell classifier trained on the fast encoder and saved in the Hugging Face
layout (``ispo finetune``, :func:`ispo.finetune`)."""

from ispo.training.classifier import CellClassifier
from ispo.training.run import DataOptions, finetune
from ispo.training.settings import Schedule, TrainSettings

__all__ = ["CellClassifier", "DataOptions", "Schedule", "TrainSettings", "finetune"]
