"""Embedding evaluation: label-separation metrics, embedding agreement checks and plots."""

from ispo.evaluate.metrics import embedding_consistency, evaluate_embedding
from ispo.evaluate.plots import plot_confusion, plot_embedding

__all__ = ["embedding_consistency", "evaluate_embedding", "plot_confusion", "plot_embedding"]
