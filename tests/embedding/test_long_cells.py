"""Real-length cells against Hugging Face alone: Kang PBMCs up to the longest, demo cells near
2,048 tokens; V1 and V2 (<cls>); ReLU and GELU checkpoints; fp32, bf16 and fp16.

Oracle: ``tests/hf_reference.py`` (``BertForMaskedLM.from_pretrained`` of the saved directory,
padded by hand, pooled by hand; no ispo code). Small models (hidden 64, 2 layers) keep it fast;
the sequences are what real cells give (1,800-2,048 tokens), where masks, positions and long
reductions matter.

Tolerances, against the fp32 reference:
- fp32: ``FP32_ATOL`` absolute. Hidden states are O(1) and float32 sums over ~2k tokens round
  at ~1e-6 (measured at most 4e-6 here), so 2e-5 leaves 5x and still catches a real mistake: a
  wrong activation is off by 0.1, a leaked pad token by 1e-3.
- bf16 / fp16: ``hf_reference.half_error`` (a few steps of the half type per layer run, times
  the largest reference entry; measured worst 3.2 bf16 steps, the <cls> vector of the last
  layer, against 6 allowed). The cosine gap of a vector with relative error e is about e^2 / 2;
  we allow e^2 (measured worst 1.2e-4 for bf16 <cls>, 1e-6 for fp16).
"""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import ispo
from hf_reference import embed_reference, half_error, load_reference
from ispo.embedding.embed import embed_cells
from ispo.errors import IspoError
from ispo.io.demo import demo_adata, demo_vocab
from ispo.io.vocab import Vocab, load_vocab
from support import save_tiny_checkpoint, shared_path

FP32_ATOL = 2e-5
N_LAYERS = 2
# (data, vocabulary version, activation): every pairing of V1/V2 with ReLU/GELU occurs
CASES = [
    ("kang", 1, "relu"),
    ("kang", 1, "gelu"),
    ("kang", 2, "gelu"),
    ("demo", 1, "relu"),
    ("demo", 2, "relu"),
    ("demo", 2, "gelu"),
]
RUNS = [("fp32", "padded"), ("fp32", "packed"), ("bf16", "padded"), ("bf16", "packed")]
RUNS += [("fp16", "padded")]


@cache
def kang_long(version: int) -> tuple[ad.AnnData, Vocab]:
    """The three longest Kang cells and the shortest, with the shared dictionaries."""
    adata = ad.read_h5ad(shared_path("kang2018_pbmc_ifnb_2000.h5ad"))
    vocab = load_vocab(shared_path(f"geneformer-v{version}"))
    cells = ispo.tokenize(adata, vocab)
    order = np.argsort(cells.lengths, kind="stable")
    pick = cells.obs_index[np.concatenate([order[-3:], order[:1]])]
    return adata[pick].copy(), vocab


def long_data(data: str, version: int) -> tuple[ad.AnnData, Vocab]:
    if data == "kang":
        return kang_long(version)
    return demo_adata(3, version=version, seed=version), demo_vocab(version)


@cache
def checkpoint(root: Path, vocab_size: int, act: str, max_len: int) -> Path:
    path = root / f"{act}-{vocab_size}"
    if not path.exists():
        save_tiny_checkpoint(
            path, vocab_size, n_layers=N_LAYERS, hidden=64, max_len=max_len, seed=7, hidden_act=act
        )
    return path


@pytest.fixture(scope="module")
def ckpt_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("long_ckpts")


@pytest.fixture(scope="module", params=CASES, ids=[f"{d}-v{v}-{a}" for d, v, a in CASES])
def case(request, ckpt_root):
    """(ispo model, AnnData, token lists, references per (pool, emb_layer))."""
    data, version, act = request.param
    adata, vocab = long_data(data, version)
    path = checkpoint(ckpt_root, vocab.size, act, 2048 if version == 1 else 4096)
    lists = ispo.tokenize(adata, vocab).to_lists()
    assert max(len(x) for x in lists) > 1800  # real lengths, not toy ones
    hf = load_reference(path)
    assert hf.config.hidden_act == act
    pools = [("mean", -1), ("cls", 0) if version == 2 else ("mean", 0)]
    refs = {p: embed_reference(hf, lists, p[1], p[0], version == 2).numpy() for p in pools}
    return ispo.load_model(path, vocab=vocab, device="cpu"), adata, refs


def tolerance(precision: str, n_run: int) -> tuple[float, float]:
    """(allowed relative error vs the largest reference entry, allowed cosine gap)."""
    if precision == "fp32":
        return FP32_ATOL, 1e-6
    rel = half_error(precision, n_run)
    return rel, rel**2


def assert_matches(got: np.ndarray, ref: np.ndarray, precision: str, emb_layer: int) -> None:
    rel, gap = tolerance(precision, N_LAYERS + emb_layer)
    atol = rel if precision == "fp32" else rel * float(np.abs(ref).max())
    diff = float(np.abs(got - ref).max())
    assert diff <= atol, f"{precision}: max abs diff {diff:.2e} > {atol:.2e}"
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert 1 - cos.min() <= gap, f"{precision}: min cosine {cos.min()}"


@pytest.mark.parametrize(("precision", "layout"), RUNS, ids=[f"{p}-{lo}" for p, lo in RUNS])
def test_long_cells_match_transformers(case, precision, layout):
    model, adata, refs = case
    cells = ispo.tokenize(adata, model.vocab)
    for (pool, emb_layer), ref in refs.items():
        got = embed_cells(
            cells,
            model,
            precision=precision,
            pool_mode=pool,
            emb_layer=emb_layer,
            layout=layout,
            batch_tokens=4096,  # long and short cells share batches: padding is exercised
        )
        assert_matches(got, ref, precision, emb_layer)


def test_activation_is_the_checkpoints(ckpt_root, tmp_path):
    """The GELU reference tells the activations apart: the same weights declared ReLU embed
    differently (so the parity above would catch an encoder that ignores ``hidden_act``)."""
    adata, vocab = demo_adata(2, seed=3), demo_vocab(1)
    gelu = checkpoint(ckpt_root, vocab.size, "gelu", 2048)
    relu = tmp_path / "declared-relu"
    shutil.copytree(gelu, relu)
    cfg = json.loads((relu / "config.json").read_text())
    (relu / "config.json").write_text(json.dumps({**cfg, "hidden_act": "relu"}))
    lists = ispo.tokenize(adata, vocab).to_lists()
    ref = embed_reference(load_reference(gelu), lists, -1, "mean", False).numpy()
    gelu_model = ispo.load_model(gelu, vocab=vocab, device="cpu")
    as_gelu = ispo.embed(adata.copy(), gelu_model)
    # the baseline method (ispo's own BertForMaskedLM, built from the config) runs GELU too
    assert_matches(ispo.embed(adata.copy(), gelu_model, method="baseline"), ref, "fp32", -1)
    as_relu = ispo.embed(adata.copy(), ispo.load_model(relu, vocab=vocab, device="cpu"))
    assert_matches(as_gelu, ref, "fp32", -1)
    assert np.abs(as_relu - ref).max() > 100 * FP32_ATOL


def test_unsupported_activation_is_refused(ckpt_root, tmp_path):
    vocab = demo_vocab(1)
    path = tmp_path / "tanh-gelu"
    shutil.copytree(checkpoint(ckpt_root, vocab.size, "gelu", 2048), path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "hidden_act": "gelu_new"}))
    with pytest.raises(IspoError, match=r"hidden_act 'gelu_new'.*use a checkpoint whose"):
        ispo.load_model(path, vocab=vocab, device="cpu")
