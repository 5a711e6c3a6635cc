"""Perturbations of real-length cells, and every perturbation type in bf16, against Hugging Face.

Oracle: ``tests/hf_reference.py`` (``BertForMaskedLM.from_pretrained``, hand padding, hand
pooling, no ispo code) for the long cells; for the small cells, the list-surgery reference of
``test_engine.py`` (one Hugging Face forward per sequence, fp32). Long cells: the longest Kang
cells (V1; ReLU and GELU checkpoints) and demo cells near 2,048 tokens (V2, <cls> mode, GELU);
one gene per cell moved by each perturbation type, in fp32 (tight) and bf16.

bf16 tolerance: ``hf_reference.cosine_atol``, about 2 e sin(t) + e^2 for a cosine of angle t
between vectors of relative error e (a few bf16 steps per layer run). Measured: at most 1/3 of it
on the small cells (3 layers: 6e-3 on a gene cosine of 0.38), 1/2 on the long cells (4e-4 near
cosine 1); a fixed bound loose enough for the far-apart pairs would pass anything near 1.
"""

from __future__ import annotations

from functools import cache

import anndata as ad
import numpy as np
import pytest
from test_engine import move_target_ref, reference, surgery_all

import ispo
from hf_reference import cosine_atol, load_reference, perturbed_row
from ispo.io.demo import demo_adata, demo_vocab
from ispo.io.vocab import Vocab, load_vocab
from support import save_tiny_checkpoint, shared_path

FP32_ATOL = 2e-5  # as the embedding parity: float32 rounding over ~2k tokens is ~1e-6
KINDS = ("delete", "overexpress", "inhibit", "activate")
# (data, vocabulary version, activation, emb_mode)
LONG = [("kang", 1, "gelu", "cell"), ("kang", 1, "relu", "cell"), ("demo", 2, "gelu", "cls")]


@cache
def long_cells(data: str, version: int) -> tuple[ad.AnnData, Vocab]:
    """Two long cells (the two longest Kang cells, or two demo cells) and their vocabulary."""
    if data == "demo":
        return demo_adata(2, version=version, seed=2), demo_vocab(version)
    adata = ad.read_h5ad(shared_path("kang2018_pbmc_ifnb_2000.h5ad"))
    vocab = load_vocab(shared_path(f"geneformer-v{version}"))
    cells = ispo.tokenize(adata, vocab)
    return adata[cells.obs_index[np.argsort(cells.lengths)[-2:]]].copy(), vocab


@pytest.fixture(scope="module", params=LONG, ids=[f"{d}-v{v}-{a}-{m}" for d, v, a, m in LONG])
def long_case(request, tmp_path_factory):
    data, version, act, mode = request.param
    adata, vocab = long_cells(data, version)
    path = save_tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt"),
        vocab.size,
        n_layers=2,
        hidden=64,
        max_len=2048 if version == 1 else 4096,
        seed=11,
        hidden_act=act,
    )
    lists = ispo.tokenize(adata, vocab).to_lists()
    assert min(len(x) for x in lists) > 1700  # real lengths (the longest Kang cell: 1,847)
    model = ispo.load_model(path, vocab=vocab, device="cpu")
    return model, load_reference(path), adata, vocab, lists, mode


def surgery(genes: list[int], g: int, kind: str) -> list[int] | None:
    """``genes`` with gene ``g`` deleted, put first, or moved one quartile; None: no change."""
    p = genes.index(g)
    others = genes[:p] + genes[p + 1 :]
    if kind == "delete":
        return others
    q = 0 if kind == "overexpress" else move_target_ref(p, len(genes), kind, 1)
    return None if q == p else others[:q] + [g] + others[q:]


def long_reference(hf, vocab: Vocab, lists, g: int, kind: str, mode: str) -> list[dict]:
    cls_eos = (vocab.cls_id, vocab.eos_id) if mode == "cls" else None
    rows = []
    for toks in lists:
        genes = toks[1:-1] if cls_eos else toks
        new = surgery(genes, g, kind)
        if new is not None:
            rows.append(perturbed_row(hf, genes, new, [g], -1, cls_eos))
    return rows


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_long_cells_every_type(long_case, precision):
    model, hf, adata, vocab, lists, mode = long_case
    genes = [x[1:-1] if mode == "cls" else x for x in lists]
    # a gene of middle rank in both cells: every type moves it (none is a no-op)
    g = next(t for t in genes[0][len(genes[0]) // 3 :] if t in genes[1][1:])
    gene_id = vocab.id_of_token()[g]
    for kind in KINDS:
        exp = long_reference(hf, vocab, lists, g, kind, mode)
        assert len(exp) == 2, kind
        df = perturb_one(adata, model, gene_id, kind, mode, precision)
        assert df["perturbed_ids"].tolist() == [gene_id] * len(exp)
        key = "cls_cos_sim" if mode == "cls" else "cos_sim"
        for col, ref_col in (("cos_sim", key), ("cell_cos_sim", "cell_cos_sim")):
            want = np.array([r[ref_col] for r in exp])
            got = df[col].to_numpy(np.float64)
            atol = FP32_ATOL if precision == "fp32" else cosine_atol(want, precision, 1)
            assert (np.abs(got - want) <= atol).all(), f"{kind} {col}: {got} vs {want}"


def perturb_one(adata, model, gene_id: str, kind: str, mode: str, precision: str):
    return ispo.perturb(
        adata,
        model,
        genes=[gene_id],
        perturb_type=kind,
        emb_mode=mode,
        precision=precision,
        batch_tokens=8192,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_small_cells_every_type_in_bf16(setup, kind):
    """Every gene of every cell, each type, bf16 against the fp32 reference (rows identical)."""
    exp, exp_genes = reference(setup, kind, surgery=lambda g: surgery_all(g, kind, 1))
    df = ispo.perturb(
        setup.adata, setup.model, perturb_type=kind, emb_mode="cell_and_gene", precision="bf16"
    )
    assert df["perturbed_ids"].tolist() == exp["perturbed_ids"].tolist()
    assert df["obs_index"].tolist() == exp["obs_index"].tolist()
    got_genes = df.attrs["gene_table"]
    assert got_genes["affected_id"].tolist() == exp_genes["affected_id"].tolist()
    n_run = setup.hf.config.num_hidden_layers - 1  # emb_layer -1
    for got, want in (
        (df["cos_sim"], exp["cos_sim"]),
        (df["cell_cos_sim"], exp["cell_cos_sim"]),
        (got_genes["cos_sim"], exp_genes["cos_sim"]),
    ):
        want = want.to_numpy(np.float64)
        err = np.abs(got.to_numpy(np.float64) - want)
        assert (err <= cosine_atol(want, "bf16", n_run)).all(), f"{kind}: worst {err.max():.2e}"
