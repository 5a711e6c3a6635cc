"""Out of device memory: the batch is split and retried with a smaller budget, never the run lost.

The documented injection point (``ISPO_FAULT=oom_above_tokens:N``, :mod:`ispo.faults`) makes
every batch of more than N tokens raise torch's out-of-memory error (the class exists on CPU
builds of torch too), as a GPU with that much memory would. Results must match an unconstrained
run within float rounding (splitting changes which cells share a batch), with the same rows in
the same order.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from ispo import faults
from ispo.embedding.embed import embed_cells
from ispo.errors import IspoError
from ispo.model.load import load_model
from ispo.perturbation.engine import perturb
from ispo.runtime.oom import OomSplitter, halve, is_oom
from ispo.tokens import tokenize


@pytest.fixture
def make_adata(adata_factory):
    return adata_factory  # tests/conftest.py's tiny AnnData over the test vocabulary


@pytest.fixture(scope="module")
def model(ckpt_v1, vocab_v1):
    return load_model(ckpt_v1, vocab=vocab_v1, device="cpu")


@pytest.fixture
def limit(monkeypatch):
    """Call ``limit(n)`` to make every batch of more than n tokens run out of memory;
    ``faults.count("oom")`` then counts the simulated errors."""

    def set_limit(n: int) -> None:
        monkeypatch.setenv(faults.ENV, f"oom_above_tokens:{n}")
        faults.reset()

    return set_limit


def test_the_simulated_error_is_what_cuda_raises():
    exc = torch.cuda.OutOfMemoryError("CUDA out of memory")
    assert is_oom(exc) and isinstance(exc, RuntimeError)
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError("out of memory"))


def test_halve_splits_items_then_row_ranges():
    assert halve([1, 2, 3]) == ([1], [2, 3])
    assert halve([(4, 0, 5)]) == ([(4, 0, 2)], [(4, 2, 5)])
    assert halve([(4, 3, 4)]) is None and halve([7]) is None


def test_embed_splits_and_retries(model, vocab_v1, limit, caplog, make_adata):
    cells = tokenize(make_adata(40, seed=1), vocab_v1)
    ref = embed_cells(cells, model, batch_tokens=10**6)  # one batch, nothing runs out
    limit(600)
    oom = OomSplitter(what="embed")
    with caplog.at_level(logging.WARNING, logger="ispo"):
        got = embed_cells(cells, model, batch_tokens=10**6, oom=oom)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    assert faults.count("oom") >= 2 and oom.cap is not None and oom.cap <= 600
    assert "out of device memory" in caplog.text and "token budget now" in caplog.text
    # the learned budget is kept: a second pass pre-splits and never runs out again
    before = faults.count("oom")
    again = embed_cells(cells, model, batch_tokens=10**6, oom=oom)
    assert faults.count("oom") == before
    np.testing.assert_array_equal(again, got)


def test_one_cell_that_never_fits_is_a_clear_error(model, vocab_v1, limit, make_adata):
    cells = tokenize(make_adata(3, seed=1), vocab_v1)
    limit(5)
    with pytest.raises(IspoError, match="does not fit in device memory") as info:
        embed_cells(cells, model)
    assert "\n" not in str(info.value)


def test_other_errors_are_not_swallowed(model, vocab_v1, monkeypatch, make_adata):
    monkeypatch.setenv(faults.ENV, "batch_error:1")
    with pytest.raises(faults.InjectedFault, match="ISPO_FAULT: injected batch error"):
        embed_cells(tokenize(make_adata(3), vocab_v1), model)


@pytest.mark.parametrize("emb_mode", ["cell", "cell_and_gene"])
def test_perturb_splits_and_retries(model, limit, caplog, emb_mode, make_adata):
    adata = make_adata(3, seed=2)
    kw = dict(genes="all", emb_mode=emb_mode, batch_tokens=10**6)
    ref = perturb(adata, model, **kw)
    limit(300)  # below one cell's perturbations: row ranges of a cell are split too
    with caplog.at_level(logging.WARNING, logger="ispo"):
        got = perturb(adata, model, **kw)
    assert faults.count("oom") > 0 and "perturb: out of device memory" in caplog.text
    ids = ["cell_id", "obs_index", "perturbed_ids", "perturbed_symbols", "n_genes_in_cell"]
    pd.testing.assert_frame_equal(got[ids], ref[ids])
    np.testing.assert_allclose(got["cos_sim"], ref["cos_sim"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["cell_cos_sim"], ref["cell_cos_sim"], rtol=0, atol=1e-5)
    if emb_mode == "cell_and_gene":
        g, r = got.attrs["gene_table"], ref.attrs["gene_table"]
        pd.testing.assert_frame_equal(g.drop(columns="cos_sim"), r.drop(columns="cos_sim"))
        np.testing.assert_allclose(g["cos_sim"], r["cos_sim"], rtol=0, atol=1e-5)
