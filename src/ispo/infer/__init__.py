"""Batching and running the model: cell embeddings."""
