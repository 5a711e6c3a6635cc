"""Gene embeddings (``ispo embed --emb-mode gene``) against plain transformers.

Oracle: ``hf_reference.hidden_at`` (``BertForMaskedLM.from_pretrained``, padded by hand) gives
every position's hidden state of every cell at Geneformer's layer; a gene's expected embedding
is the mean (``np.mean``) or median (``np.median``) of its rows over the cells where it occurs,
every position counted (V2: ``<cls>`` and ``<eos>`` too), as Geneformer's ``EmbExtractor(
emb_mode="gene")`` does.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from hf_reference import hidden_at, layer_of, load_reference
from ispo.embedding.genes import GeneRun, embed_genes
from ispo.errors import IspoError
from ispo.io.select import choose_rows
from ispo.model.load import load_model
from ispo.tokens import tokenize
from support import make_adata


@pytest.fixture(scope="module")
def adata():
    a = make_adata(26, seed=5)
    a.obs["state"] = ["x", "y"] * 13
    return a


def reference(ckpt, token_lists, emb_layer, stat):
    """{token: (summary vector, number of cells)} from transformers' hidden states."""
    hf = load_reference(ckpt)
    per_token: dict[int, list[np.ndarray]] = {}
    for toks, h in zip(token_lists, hidden_at(hf, token_lists, layer_of(hf, emb_layer))):
        for t, row in zip(toks, h.numpy()):
            per_token.setdefault(t, []).append(row)
    summary = np.mean if stat == "mean" else np.median
    return {t: (summary(np.stack(v), axis=0), len(v)) for t, v in per_token.items()}


@pytest.mark.parametrize(
    "version,stat,emb_layer", [(1, "mean", -1), (2, "mean", 0), (1, "median", 0), (2, "median", -1)]
)
def test_gene_embeddings_match_transformers(
    tmp_path, adata, version, stat, emb_layer, vocab_v1, vocab_v2, ckpt_v1, ckpt_v2
):
    vocab, ckpt = (vocab_v1, ckpt_v1) if version == 1 else (vocab_v2, ckpt_v2)
    model = load_model(ckpt, vocab=vocab, device="cpu")
    model = model.with_settings(model.settings.replace(emb_layer=emb_layer))
    out = tmp_path / "genes.h5ad"
    res = embed_genes(adata, out, model, vocab, GeneRun(stat, chunk_cells=7, workers=0))
    cells = tokenize(adata, vocab)
    exp = reference(ckpt, cells.to_lists(), emb_layer, stat)
    got = ad.read_h5ad(out)
    assert res["n_embedded"] == len(cells) and res["n_genes"] == got.n_obs == len(exp)
    assert got.obs["token"].tolist() == sorted(exp)
    id_of = vocab.id_of_token()
    assert got.obs_names.tolist() == [id_of[t] for t in sorted(exp)]
    assert got.obs["symbol"].tolist() == [vocab.symbol(id_of[t]) for t in sorted(exp)]
    assert got.obs["n_cells"].tolist() == [exp[t][1] for t in sorted(exp)]
    want = np.stack([exp[t][0] for t in sorted(exp)])
    np.testing.assert_allclose(got.X, want, rtol=0, atol=2e-5)
    if version == 2:
        assert {"<cls>", "<eos>"} <= set(got.obs_names)
        assert got.obs.loc["<cls>", "n_cells"] == len(cells)
    meta = got.uns["geneformer"]
    assert (meta["emb_mode"], meta["summary_stat"], meta["emb_layer"]) == ("gene", stat, emb_layer)


def test_parquet_output_and_chosen_cells(tmp_path, adata, vocab_v1, ckpt_v1):
    """Only the chosen cells count (``--filter``, ``--max-ncells``); Parquet holds the same
    table as the .h5ad."""
    model = load_model(ckpt_v1, vocab=vocab_v1, device="cpu")
    rows = choose_rows(adata.obs, {"state": ["x"]}, 5)
    assert rows.sum() == 5
    run = GeneRun("mean", rows=rows, chunk_cells=4, workers=0)
    embed_genes(adata, tmp_path / "g.h5ad", model, vocab_v1, run)
    embed_genes(adata, tmp_path / "g.parquet", model, vocab_v1, run)
    cells = tokenize(adata[rows].copy(), vocab_v1)
    exp = reference(ckpt_v1, cells.to_lists(), -1, "mean")
    h5, pq = ad.read_h5ad(tmp_path / "g.h5ad"), pd.read_parquet(tmp_path / "g.parquet")
    assert h5.obs["n_cells"].tolist() == [exp[t][1] for t in sorted(exp)]
    np.testing.assert_allclose(h5.X, np.stack([exp[t][0] for t in sorted(exp)]), atol=2e-5)
    assert pq["ensembl_id"].tolist() == h5.obs_names.tolist()
    assert pq["n_cells"].tolist() == h5.obs["n_cells"].tolist()
    np.testing.assert_array_equal(pq[[f"e{j}" for j in range(h5.n_vars)]].to_numpy(), h5.X)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(stat="exact_mean"), "gene embeddings summarise by mean or median, not 'exact_mean'"),
        (dict(out="genes.csv"), "gene embeddings go to an .h5ad or .parquet file, not genes.csv"),
    ],
)
def test_bad_options(tmp_path, adata, vocab_v1, ckpt_v1, kw, match):
    model = load_model(ckpt_v1, vocab=vocab_v1, device="cpu")
    out = tmp_path / kw.get("out", "g.h5ad")
    with pytest.raises(IspoError, match=match):
        embed_genes(adata, out, model, vocab_v1, GeneRun(kw.get("stat", "mean"), workers=0))
    assert not out.exists()


def test_packed_layout_gives_the_same_genes(tmp_path, adata, vocab_v2, ckpt_v2):
    """Cells laid end to end (the layout CUDA half precision uses) index the same positions."""
    model = load_model(ckpt_v2, vocab=vocab_v2, device="cpu")
    run = GeneRun("mean", chunk_cells=9, workers=0)
    embed_genes(adata, tmp_path / "padded.h5ad", model, vocab_v2, run)
    packed = model.with_settings(model.settings.replace(layout="packed", batch_tokens=300))
    embed_genes(adata, tmp_path / "packed.h5ad", packed, vocab_v2, run)
    a, b = ad.read_h5ad(tmp_path / "padded.h5ad"), ad.read_h5ad(tmp_path / "packed.h5ad")
    assert a.obs.equals(b.obs)
    np.testing.assert_allclose(b.X, a.X, rtol=0, atol=2e-5)
