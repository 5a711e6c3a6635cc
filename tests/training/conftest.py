"""Fixtures of the fine-tuning tests: a tiny checkpoint over the demo vocabulary and a small
labelled input (few genes per cell, three classes) written as .h5ad."""

from __future__ import annotations

from pathlib import Path

import pytest

from _scaleout import small_adata, tiny_checkpoint


@pytest.fixture(scope="session")
def ft_ckpt(tmp_path_factory) -> Path:
    """transformers' BertForMaskedLM, hidden 16, 2 layers, the V1 vocabulary size."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ft") / "ckpt")


@pytest.fixture(scope="session")
def ft_data(tmp_path_factory) -> Path:
    """48 cells, labels a/b/c in obs['state'] (16 each)."""
    path = tmp_path_factory.mktemp("ft") / "cells.h5ad"
    small_adata(48, seed=5).write_h5ad(path)
    return path
