"""The one encoder runner: the padded and the packed layout give what one unpadded forward per
cell gives (hidden states, pooled embeddings, gathered vectors), and the layout rule is one."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ispo.errors import IspoError
from ispo.model.load import load_model
from ispo.runtime.runner import (
    Runner,
    Tokens,
    choose_layout,
    encoder_clock,
)
from ispo.settings import Layout
from ispo.tokens import tokenize
from support import make_adata

ATOL = 1e-5


@pytest.fixture(scope="module")
def setups(ckpt_v1, ckpt_v2, vocab_v1, vocab_v2):
    """Per version: the fp32 encoder and cells of very different lengths."""
    adata = make_adata(16, seed=3)
    X = adata.X.toarray()
    rng = np.random.default_rng(3)
    X *= rng.random(X.shape) < rng.uniform(0.1, 1.0, (X.shape[0], 1))
    X[:, 0] += 1  # no empty cell
    adata.X = sp.csr_matrix(X)
    out = {}
    for version, ckpt, vocab in ((1, ckpt_v1, vocab_v1), (2, ckpt_v2, vocab_v2)):
        model = load_model(ckpt, vocab=vocab, device="cpu")
        cells = tokenize(adata, vocab)
        assert len(set(cells.lengths.tolist())) > 4  # genuinely ragged
        out[version] = (model, model.encoder(model.layers_for(-1)), cells)
    return out


def one_by_one(enc, cells) -> list[torch.Tensor]:
    """The reference: each cell alone, no padding, no mask."""
    with torch.inference_mode():
        return [
            enc(torch.from_numpy(cells.cell(i).astype(np.int64))[None])[0]
            for i in range(len(cells))
        ]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("layout", [Layout.PADDED, Layout.PACKED])
def test_layouts_equal_per_cell_forward(setups, version, layout):
    model, enc, cells = setups[version]
    ref = one_by_one(enc, cells)
    runner = Runner(enc, pad_id=model.config.pad_id, layout=layout)
    idx = np.arange(len(cells))
    with torch.inference_mode():
        got = runner.encode(Tokens.from_cells(cells, idx, torch.device("cpu")))
        assert (got.packed is not None) == (layout == Layout.PACKED)
        for i in idx:
            torch.testing.assert_close(got.row(int(i)), ref[i], atol=ATOL, rtol=0)
        s = int(cells.has_cls)
        gene = lambda r: r[s : len(r) - s]
        mean = torch.stack([gene(r).mean(0) for r in ref])
        torch.testing.assert_close(got.pool(cells.has_cls, "mean"), mean, atol=ATOL, rtol=0)
        if cells.has_cls:
            cls = torch.stack([r[0] for r in ref])
            torch.testing.assert_close(got.pool(True, "cls"), cls, atol=ATOL, rtol=0)
        # a gather of (row, position) pairs: the last token of each row, then the first
        last = torch.as_tensor(cells.lengths - 1)
        pos = torch.stack([last, torch.zeros_like(last)], 1)
        want = torch.stack([torch.stack([r[-1], r[0]]) for r in ref])
        torch.testing.assert_close(got.take(pos), want, atol=ATOL, rtol=0)


def test_uniform_blocks_run_without_mask(setups):
    """One cell's perturbations share a length: no padding, no mask, in either layout."""
    model, enc, cells = setups[1]
    rows = torch.from_numpy(cells.cell(0).astype(np.int64))
    block = torch.stack([rows.roll(k) for k in range(4)])  # 4 rows of one length
    tokens = Tokens.from_blocks([block[:1], block[1:]], cells=[0, 0])
    assert tokens.uniform and tokens.width == len(rows)
    with torch.inference_mode():
        ref = enc(block)
        for layout in (Layout.PADDED, Layout.PACKED):
            got = Runner(enc, pad_id=model.config.pad_id, layout=layout).encode(tokens)
            assert got.packed is None  # uniform: the padded layout is the packed one
            torch.testing.assert_close(got.hidden, ref, atol=0, rtol=0)


def test_ragged_blocks_pad_with_the_pad_id(setups):
    model, _, cells = setups[2]
    a = torch.from_numpy(cells.cell(0).astype(np.int64))
    tokens = Tokens.from_blocks([a[None], a[None, :3]], cells=[0, 0])
    assert not tokens.uniform and tokens.lengths.tolist() == [len(a), 3]
    ids = tokens.padded(model.config.pad_id)
    assert ids[1, :3].tolist() == a[:3].tolist()
    assert (ids[1, 3:] == model.config.pad_id).all()


@pytest.mark.parametrize(
    ("layout", "device", "precision", "want"),
    [
        ("auto", "cpu", "bf16", Layout.PADDED),
        ("auto", "cpu", "fp32", Layout.PADDED),
        ("auto", "cuda", "fp32", Layout.PADDED),
        ("auto", "cuda", "bf16", Layout.PACKED),
        ("auto", "cuda", "fp16", Layout.PACKED),
        ("packed", "cpu", "fp32", Layout.PACKED),
        ("padded", "cuda", "bf16", Layout.PADDED),
    ],
)
def test_one_layout_rule(layout, device, precision, want):
    assert choose_layout(layout, torch.device(device), precision) == want


def test_layout_rule_refuses_unknown():
    with pytest.raises(IspoError, match="layout must be one of"):
        choose_layout("ragged", torch.device("cpu"), "fp32")


def test_encoder_clock_counts_batches(setups):
    model, enc, cells = setups[1]
    runner = Runner(enc, pad_id=model.config.pad_id, layout=Layout.PADDED)
    tokens = Tokens.from_cells(cells, np.arange(3), torch.device("cpu"))
    with torch.inference_mode():
        runner.encode(tokens)  # outside the clock: not counted
        with encoder_clock() as clock:
            runner.encode(tokens)
            runner.encode(tokens)
    assert clock.batches == 2 and clock.seconds > 0


def test_bf16_encoder_compiles(setups):
    """The fused bf16 linear layers of the eager CPU path step aside under torch.compile
    (inductor fuses the plain ops itself): the compiled encoder runs and agrees with eager
    within bf16 rounding (8 significant bits, a few roundings per layer)."""
    model, _, cells = setups[1]
    enc = model.encoder(model.layers_for(-1), "bf16")
    ids = torch.from_numpy(cells.cell(0).astype(np.int64))[None]
    with torch.inference_mode():
        eager = enc(ids).float()
        compiled = torch.compile(enc, dynamic=False)(ids).float()
    torch.testing.assert_close(compiled, eager, atol=0.1, rtol=0.05)
