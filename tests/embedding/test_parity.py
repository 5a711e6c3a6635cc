"""Cell embeddings: the fast and baseline paths against plain transformers.

Oracle: ``tests/hf_reference.py`` (``BertForMaskedLM.from_pretrained`` of the checkpoint
directory, padded by hand, pooled by hand; no ispo code). ispo's own baseline method is checked
against it too, never used as the oracle. Tiny seeded checkpoints (hidden 32, 3 layers) saved
with ``save_pretrained`` stand in for Geneformer; V1-style (no <cls>/<eos>) and V2-style
(<pad>=0, <mask>=1, <cls>=2, <eos>=3). Real cell lengths: ``test_long_cells.py``.
"""

from __future__ import annotations

from functools import cache

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from hf_reference import embed_reference, load_reference
from ispo.embedding.embed import embed, embed_cells
from ispo.errors import IspoError
from ispo.model.load import load_model
from ispo.tokens import tokenize
from support import make_adata, save_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpts(ckpt_v1, ckpt_v2):
    return {1: ckpt_v1, 2: ckpt_v2}


@pytest.fixture(scope="module")
def models(ckpt_v1, ckpt_v2, vocab_v1, vocab_v2):
    return {
        1: load_model(ckpt_v1, vocab=vocab_v1, device="cpu"),
        2: load_model(ckpt_v2, vocab=vocab_v2, device="cpu"),
    }


def _adata(seed: int = 0) -> ad.AnnData:
    adata = make_adata(24, seed=seed)
    # vary cell sizes a lot so batches need padding
    X = adata.X.toarray()
    rng = np.random.default_rng(seed)
    for i in range(X.shape[0]):
        keep = rng.random(X.shape[1]) < rng.uniform(0.1, 1.0)
        X[i] *= keep
    X[:, 0] += 1  # no empty cell
    adata.X = sp.csr_matrix(X)
    return adata


@pytest.fixture(scope="module")
def cells(vocab_v1, vocab_v2):
    adata = _adata(0)
    out = {1: tokenize(adata, vocab_v1), 2: tokenize(adata, vocab_v2)}
    assert len(set(out[1].lengths.tolist())) > 5  # genuinely ragged
    return out


@pytest.fixture(scope="module")
def uniform_cells(vocab_v1, vocab_v2):
    """All cells truncated to the same length: the fast path runs without a mask."""
    adata = make_adata(24, seed=1, density=0.8)
    out = {1: tokenize(adata, vocab_v1, max_input=9), 2: tokenize(adata, vocab_v2, max_input=11)}
    for c in out.values():
        assert len(set(c.lengths.tolist())) == 1
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_close_embeddings(a: np.ndarray, b: np.ndarray, atol: float = 1e-4) -> None:
    assert a.shape == b.shape
    assert np.isfinite(a).all() and np.isfinite(b).all()
    cos = cosine(a, b)
    assert cos.min() >= 0.99999, f"min cosine {cos.min()}"
    assert np.abs(a - b).max() < atol, f"max abs diff {np.abs(a - b).max()}"


CASES = [
    (1, -1, "mean"),
    (1, 0, "mean"),
    (2, -1, "mean"),
    (2, 0, "mean"),
    (2, -1, "cls"),
    (2, 0, "cls"),
]


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize(("version", "emb_layer", "pool_mode"), CASES)
def test_fast_and_baseline_match_transformers(
    ckpts, models, cells, version, emb_layer, pool_mode, layout
):
    model, c = models[version], cells[version]
    ref = transformers_reference(ckpts[version], c, emb_layer, pool_mode)
    fast = embed_cells(
        c,
        model,
        method="fast",
        emb_layer=emb_layer,
        pool_mode=pool_mode,
        batch_tokens=300,
        layout=layout,
    )
    base = embed_cells(
        c, model, method="baseline", emb_layer=emb_layer, pool_mode=pool_mode, batch_size=7
    )
    assert fast.dtype == np.float32 and fast.shape == (len(c), 32)
    assert_close_embeddings(fast, ref)
    assert_close_embeddings(base, ref)
    # the cells are told apart (a broken model would give one vector for every cell)
    assert cosine(fast[:1].repeat(len(c), 0), fast)[1:].min() < 0.999


@pytest.mark.parametrize("version", [1, 2])
def test_uniform_lengths_match_transformers(ckpts, models, uniform_cells, version):
    """All cells of one length: the fast path runs without any mask."""
    model, c = models[version], uniform_cells[version]
    ref = transformers_reference(ckpts[version], c, -1, "mean")
    assert_close_embeddings(embed_cells(c, model, method="fast"), ref)
    assert_close_embeddings(embed_cells(c, model, method="baseline"), ref)


def test_layers_differ(models, cells):
    """emb_layer -1 and 0 are different layers (so the parity tests mean something)."""
    a = embed_cells(cells[1], models[1], emb_layer=-1)
    b = embed_cells(cells[1], models[1], emb_layer=0)
    assert np.abs(a - b).max() > 1e-2


@pytest.mark.parametrize("version", [1, 2])
def test_fast_batch_size_invariance(models, cells, version):
    model, c = models[version], cells[version].subset(np.arange(12))
    one = embed_cells(c, model, method="fast", batch_tokens=1)  # one cell per batch
    huge = embed_cells(c, model, method="fast", batch_tokens=10**9)  # one batch
    mid = embed_cells(c, model, method="fast", batch_tokens=150)
    np.testing.assert_allclose(one, huge, atol=1e-5, rtol=0)
    np.testing.assert_allclose(mid, huge, atol=1e-5, rtol=0)


@pytest.mark.parametrize("version", [1, 2])
def test_baseline_batch_size_invariance(models, cells, version):
    model, c = models[version], cells[version].subset(np.arange(12))
    one = embed_cells(c, model, method="baseline", batch_size=1)
    ten = embed_cells(c, model, method="baseline", batch_size=10)
    np.testing.assert_allclose(one, ten, atol=1e-5, rtol=0)


def transformers_reference(ckpt, c, emb_layer: int, pool_mode: str) -> np.ndarray:
    """Embeddings computed with transformers only (tests/hf_reference.py)."""
    hf = cached_reference(str(ckpt))
    return embed_reference(hf, c.to_lists(), emb_layer, pool_mode, c.has_cls).numpy()


cached_reference = cache(load_reference)  # one read per checkpoint: the model is never changed


@pytest.mark.parametrize(("version", "emb_layer", "pool_mode"), CASES)
def test_fast_matches_transformers_reference(
    ckpt_v1, ckpt_v2, vocab_v1, vocab_v2, cells, version, emb_layer, pool_mode
):
    ckpt = {1: ckpt_v1, 2: ckpt_v2}[version]
    vocab = {1: vocab_v1, 2: vocab_v2}[version]
    model = load_model(ckpt, vocab=vocab, device="cpu")  # a fresh load from the directory
    c = cells[version]
    ref = transformers_reference(ckpt, c, emb_layer, pool_mode)
    fast = embed_cells(c, model, method="fast", emb_layer=emb_layer, pool_mode=pool_mode)
    assert_close_embeddings(fast, ref, atol=1e-4)
    np.testing.assert_allclose(fast, ref, atol=2e-5, rtol=0)


def test_pytorch_model_bin_checkpoint(tmp_path, vocab_v1, ckpt_v1, cells):
    """A checkpoint saved without safetensors loads and gives the same numbers."""
    bin_dir = save_tiny_checkpoint(
        tmp_path / "bin", vocab_v1.size, max_len=2048, seed=0, safe_serialization=False
    )
    assert (bin_dir / "pytorch_model.bin").is_file()
    assert not (bin_dir / "model.safetensors").exists()
    from_bin = load_model(bin_dir, vocab=vocab_v1, device="cpu")
    from_st = load_model(ckpt_v1, vocab=vocab_v1, device="cpu")
    a = embed_cells(cells[1], from_bin)
    b = embed_cells(cells[1], from_st)
    np.testing.assert_array_equal(a, b)
    ref = transformers_reference(bin_dir, cells[1], -1, "mean")
    np.testing.assert_allclose(a, ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("version", [1, 2])
def test_embed_truncates_to_model_positions(tmp_path, vocab_v1, vocab_v2, version):
    """A model with fewer positions than the vocabulary's input size gets cells cut to fit."""
    vocab = {1: vocab_v1, 2: vocab_v2}[version]
    root = save_tiny_checkpoint(tmp_path / "short", vocab.size, max_len=16, seed=3)
    model = load_model(root, vocab=vocab, device="cpu")
    adata = _adata(5)
    out = embed(adata, model)
    c = tokenize(adata, vocab, max_input=16)
    assert c.lengths.max() == 16
    ref = transformers_reference(root, c, -1, "mean")
    np.testing.assert_allclose(out[c.obs_index], ref, atol=2e-5, rtol=0)
    base = embed(adata, model, method="baseline", key_added="base")
    np.testing.assert_allclose(base[c.obs_index], ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("method", ["fast", "baseline"])
def test_embed_fills_adata(models, vocab_v1, method, tmp_path):
    adata = _adata(2)
    n = adata.n_obs
    adata.obs["filter_pass"] = 1
    adata.obs.loc[adata.obs_names[[2, 11]], "filter_pass"] = 0
    X = adata.X.toarray()
    X[5] = 0  # an empty cell: skipped with a warning
    adata.X = sp.csr_matrix(X)
    out = embed(adata, models[1], vocab=vocab_v1, method=method)
    assert out.shape == (n, 32) and out.dtype == np.float32
    emb = adata.obsm["X_geneformer"]
    np.testing.assert_array_equal(emb, out)
    skipped = [2, 5, 11]
    done = adata.obs["geneformer_embedded"].to_numpy()
    assert done.dtype == bool
    assert done.tolist() == [i not in skipped for i in range(n)]
    assert np.isnan(emb[skipped]).all()
    assert np.isfinite(emb[done]).all()
    meta = adata.uns["geneformer"]
    for key in (
        "model",
        "random_init",
        "method",
        "precision",
        "emb_layer",
        "pool",
        "key_added",
        "n_cells_embedded",
        "vocab",
        "device",
        "seconds",
        "versions",
        "architecture",
    ):
        assert key in meta, key
    assert meta["method"] == method and meta["precision"] == "fp32"
    assert meta["emb_layer"] == -1 and meta["pool"] == "mean"
    assert meta["key_added"] == "X_geneformer"
    assert meta["n_cells_embedded"] == n - len(skipped)
    assert not meta["random_init"]
    assert meta["vocab"] == vocab_v1.source
    # rows are the embeddings of those cells, in obs order
    c = tokenize(adata, vocab_v1)
    np.testing.assert_allclose(
        emb[c.obs_index], embed_cells(c, models[1], method=method), atol=1e-5, rtol=0
    )
    # and the result is storable
    adata.write_h5ad(tmp_path / "out.h5ad")
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_array_equal(back.obsm["X_geneformer"], emb)


def test_embed_key_added_and_model_vocab(models, vocab_v2):
    adata = _adata(3)
    out = embed(adata, models[2], key_added="X_gf", pool_mode="cls", emb_layer=0)
    assert "X_gf" in adata.obsm and "X_geneformer" not in adata.obsm
    assert adata.uns["geneformer"]["key_added"] == "X_gf"
    assert adata.uns["geneformer"]["pool"] == "cls"
    c = tokenize(adata, vocab_v2)
    np.testing.assert_allclose(
        out, embed_cells(c, models[2], pool_mode="cls", emb_layer=0), atol=1e-6, rtol=0
    )


def test_embed_cls_needs_v2(models, vocab_v1):
    with pytest.raises(IspoError, match=r"pool 'cls' needs a V2 vocabulary .*use pool 'mean'"):
        embed(_adata(4), models[1], vocab=vocab_v1, pool_mode="cls")


def test_random_weights_have_the_reference_layout() -> None:
    """Random-weight presets are built without transformers (it costs seconds to import): the
    state dict must still be exactly BertForMaskedLM's (names, shapes, tied decoder), seeded,
    so the reference model loads every tensor and agrees with the fast path."""
    from transformers import BertForMaskedLM

    from ispo.model.load import load_model

    name = "Geneformer-V1-10M"  # the smallest preset (6 layers, hidden 256)
    model = load_model(name, random_init=True, seed=3, device="cpu")
    cfg, sd = model.config, model.state_dict
    ref = BertForMaskedLM(cfg.to_hf()).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    assert sd["cls.predictions.decoder.weight"] is sd["bert.embeddings.word_embeddings.weight"]
    word = sd["bert.embeddings.word_embeddings.weight"]
    assert torch.equal(word[cfg.pad_id], torch.zeros(cfg.hidden))
    assert 0.015 < float(sd["bert.encoder.layer.0.intermediate.dense.weight"].std()) < 0.025
    again = load_model(name, random_init=True, seed=3, device="cpu").state_dict
    assert all(torch.equal(sd[k], again[k]) for k in sd)
    other = load_model(name, random_init=True, seed=4, device="cpu").state_dict
    assert not torch.equal(
        sd["bert.embeddings.word_embeddings.weight"],
        other["bert.embeddings.word_embeddings.weight"],
    )
    model = BertForMaskedLM(cfg.to_hf())
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
