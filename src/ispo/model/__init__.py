"""Geneformer architectures, checkpoint loading and the fast encoder."""
