"""Fixtures of the tuning tests: the tiny demo-vocabulary model and four demo cells (about 2,000
tokens each)."""

from __future__ import annotations

import pytest

import ispo

pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return ispo.load_model(str(tiny_model_dir), vocab=ispo.demo_vocab(), device="cpu")


@pytest.fixture(scope="module")
def cells(model):
    return ispo.tokenize(ispo.demo_adata(4), model.vocab)
