"""Embedding with fine-tuned checkpoints: the three layouts embed as transformers' own classes
compute, and a cell classifier's probabilities equal its logits' softmax.

Oracle: ``tests/hf_reference.py``: the encoder of ``BertForSequenceClassification`` /
``BertForTokenClassification`` / ``BertModel`` (Geneformer's multi-task layout) loaded with
``from_pretrained``, padded and pooled by hand; class probabilities from
``BertForSequenceClassification.from_pretrained`` logits, one unpadded forward per cell.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import ispo
from hf_reference import class_probs, embed_reference, load_encoder_reference
from ispo.embedding.stream import embed_file
from support import CLASSES, FINETUNED, make_adata, save_finetuned_checkpoint

FP32_ATOL = 2e-5


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, vocab_v1, vocab_v2) -> dict:
    root = tmp_path_factory.mktemp("finetuned_embed")
    return {
        (layout, v): save_finetuned_checkpoint(
            root / f"{layout}_v{v}", vocab.size, layout, max_len=2048 * v, seed=v
        )
        for layout in FINETUNED
        for v, vocab in ((1, vocab_v1), (2, vocab_v2))
    }


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    a = make_adata(12, seed=3)
    X = a.X.toarray()
    X[5] = 0  # a cell with no gene: not embedded, NaN probabilities and no predicted class
    a.X = sp.csr_matrix(X)
    return a


def _vocab(version, vocab_v1, vocab_v2):
    return vocab_v1 if version == 1 else vocab_v2


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("layout", FINETUNED)
def test_each_layout_embeds_as_transformers(ckpts, adata, vocab_v1, vocab_v2, layout, version):
    vocab = _vocab(version, vocab_v1, vocab_v2)
    model = ispo.load_model(ckpts[layout, version], vocab=vocab, device="cpu")
    a = adata.copy()
    got = ispo.embed(a, model)
    cells = ispo.tokenize(a, vocab)
    hf = load_encoder_reference(ckpts[layout, version], layout)
    want = embed_reference(hf, cells.to_lists(), -1, "mean", version == 2).numpy()
    np.testing.assert_allclose(got[cells.obs_index], want, atol=FP32_ATOL, rtol=0)
    has_probs = any(c.startswith("prob_") for c in a.obs.columns)
    assert has_probs is (layout == "sequence")


@pytest.mark.parametrize("method", ["fast", "baseline"])
@pytest.mark.parametrize("emb_layer", [-1, 0])
@pytest.mark.parametrize("version", [1, 2])
def test_probabilities_equal_the_logits_softmax(
    ckpts, adata, vocab_v1, vocab_v2, version, emb_layer, method
):
    vocab = _vocab(version, vocab_v1, vocab_v2)
    ckpt = ckpts["sequence", version]
    model = ispo.load_model(ckpt, vocab=vocab, device="cpu")
    a = adata.copy()
    ispo.embed(a, model, emb_layer=emb_layer, method=method)
    cells = ispo.tokenize(a, vocab)
    want = class_probs(ckpt, cells.to_lists()).numpy()
    got = a.obs[[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(got[cells.obs_index], want, atol=1e-5, rtol=0)
    pred = a.obs["pred_class"]
    assert pred.iloc[cells.obs_index].tolist() == [CLASSES[j] for j in want.argmax(1)]
    missing = np.setdiff1d(np.arange(a.n_obs), cells.obs_index)
    assert missing.tolist() == [5]  # the empty cell
    assert pred.isna().to_numpy()[missing].all() and np.isnan(got[missing]).all()
    assert a.uns["geneformer"]["classes"] == list(CLASSES)


def test_streamed_file_has_the_same_columns(ckpts, adata, vocab_v1, tmp_path):
    model = ispo.load_model(ckpts["sequence", 1], vocab=vocab_v1, device="cpu")
    mem = adata.copy()
    ispo.embed(mem, model)
    adata.write_h5ad(tmp_path / "in.h5ad")
    out = tmp_path / "out.h5ad"
    embed_file(tmp_path / "in.h5ad", out, model, chunk_cells=5, workers=0)
    got = ad.read_h5ad(out)
    cols = ["pred_class", *(f"prob_{c}" for c in CLASSES)]
    for col in cols[1:]:
        np.testing.assert_allclose(got.obs[col], mem.obs[col], atol=1e-6, rtol=0)
    assert got.obs["pred_class"].astype(str).tolist() == mem.obs["pred_class"].astype(str).tolist()
    assert list(got.uns["geneformer"]["classes"]) == list(CLASSES)
    # without the classifier: no columns, and the encoder stops at the pooled layer as before
    bare = tmp_path / "bare.h5ad"
    embed_file(tmp_path / "in.h5ad", bare, model.without_classifier(), workers=0)
    bare_obs = ad.read_h5ad(bare).obs
    assert not set(cols) & set(bare_obs.columns)


@pytest.mark.parametrize("layout", ["token", "multitask"])
def test_other_heads_add_no_columns_and_say_why(ckpts, adata, vocab_v1, caplog, layout):
    with caplog.at_level(logging.INFO, logger="ispo.model.finetuned"):
        model = ispo.load_model(ckpts[layout, 1], vocab=vocab_v1, device="cpu")
    assert "no class-probability columns are added" in caplog.text
    a = adata.copy()
    ispo.embed(a, model)
    assert list(a.obs.columns) == ["geneformer_embedded"]
    assert "classes" not in a.uns["geneformer"]
