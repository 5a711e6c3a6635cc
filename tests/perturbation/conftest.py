"""Fixtures of the perturbation tests: a tiny vocabulary, AnnData and checkpoint per version.

Own fixtures (not the shared ``tests/conftest.py`` ones) because these tests depend on exact
sizes: the models take at most ``MAX_GENES`` genes, so some cells sit at the maximum length
(overexpressing a gene they lack overflows) and others are short. Everything is built once per
session; a reference Hugging Face model is loaded from the same checkpoint directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import ispo
from ispo.io.vocab import CLS, EOS, MASK, PAD, Vocab

N_VOCAB = 50  # genes in the vocabulary
N_DATA = 40  # of which the data has the first N_DATA (the rest are never expressed)
MAX_GENES = 12  # genes a model takes (V1: max_len 12; V2: 14 with <cls>/<eos>)
# genes expressed per cell (some above MAX_GENES: those cells are truncated, at max length)
CELL_SIZES = (30, 4, 10, 25, 3, 14, 40, 7, 22, 9, 6, 28)
STATES = ("a", "b", "c")


def gid(i: int) -> str:
    return f"ENSG{i:011d}"


def sym(i: int) -> str:
    return f"G{i}"


def make_vocab(version: int) -> Vocab:
    rng = np.random.default_rng(version)
    specials = [PAD, MASK] + ([CLS, EOS] if version == 2 else [])
    genes = [gid(i) for i in range(N_VOCAB)]
    perm = rng.permutation(N_VOCAB)  # token ids not in gene order
    token_dict = {t: i for i, t in enumerate(specials)}
    token_dict.update({g: len(specials) + int(p) for g, p in zip(genes, perm)})
    medians = {g: float(m) for g, m in zip(genes, rng.uniform(0.5, 3.0, N_VOCAB))}
    names = {sym(i): gid(i) for i in range(N_VOCAB)}
    mapping = {g: g for g in genes} | {s.upper(): g for s, g in names.items()}
    return Vocab(token_dict, medians, names, mapping, source=f"perturb-test-v{version}")


def make_adata(seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = np.zeros((len(CELL_SIZES), N_DATA), dtype=np.float32)
    for i, k in enumerate(CELL_SIZES):
        cols = rng.choice(N_DATA, size=k, replace=False)
        X[i, cols] = rng.choice(np.arange(1, 200), size=k, replace=False)  # no ties
    obs = pd.DataFrame(
        {
            "state": [STATES[i % 3] for i in range(len(CELL_SIZES))],
            "batch": ["x" if i < 6 else "y" for i in range(len(CELL_SIZES))],
        },
        index=[f"cell{i}" for i in range(len(CELL_SIZES))],
    )
    var = pd.DataFrame(
        {"ensembl_id": [gid(i) for i in range(N_DATA)]}, index=[sym(i) for i in range(N_DATA)]
    )
    return ad.AnnData(sp.csr_matrix(X), obs=obs, var=var)


def save_checkpoint(path: Path, vocab_size: int, max_len: int, seed: int) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=max_len,
        hidden_act="relu",
        layer_norm_eps=1e-12,
        pad_token_id=0,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    BertForMaskedLM(config).eval().save_pretrained(path)
    return path


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: intra-op threads only add overhead (and contend on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Setup:
    """One model version: vocabulary, data, fast model, reference HF model, tokenized cells."""

    version: int
    vocab: Vocab
    adata: ad.AnnData
    model: object  # ispo GeneformerModel
    hf: object  # transformers BertForMaskedLM, fp32, eval
    cells: object  # ispo TokenizedCells of adata (as the engine tokenizes them)

    max_genes: int = MAX_GENES
    n_data: int = N_DATA
    n_vocab: int = N_VOCAB

    @staticmethod
    def gid(i: int) -> str:
        return gid(i)

    @property
    def has_cls(self) -> bool:
        return self.version == 2

    def genes(self, i: int) -> list[int]:
        """Gene tokens (no <cls>/<eos>) of tokenized cell ``i``."""
        toks = self.cells.cell(i).tolist()
        return toks[1:-1] if self.has_cls else toks

    def token(self, gene: int) -> int:
        return self.vocab.token_dict[gid(gene)]


def _setup(version: int, root: Path) -> Setup:
    from transformers import BertForMaskedLM

    vocab = make_vocab(version)
    max_len = MAX_GENES + (2 if version == 2 else 0)
    path = save_checkpoint(root / f"ckpt_v{version}", vocab.size, max_len, seed=10 + version)
    model = ispo.load_model(path, vocab=vocab, device="cpu")
    hf = BertForMaskedLM.from_pretrained(path).eval()
    adata = make_adata(seed=version)
    cells = ispo.tokenize(adata, vocab, max_input=max_len)
    assert len(cells) == len(CELL_SIZES)
    assert int(cells.lengths.max()) == max_len  # some cells sit at the maximum length
    return Setup(version, vocab, adata, model, hf, cells)


@pytest.fixture(scope="session")
def setup_v1(tmp_path_factory) -> Setup:
    return _setup(1, tmp_path_factory.mktemp("perturb_v1"))


@pytest.fixture(scope="session")
def setup_v2(tmp_path_factory) -> Setup:
    return _setup(2, tmp_path_factory.mktemp("perturb_v2"))


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
def setup(request, setup_v1, setup_v2) -> Setup:
    return setup_v1 if request.param == 1 else setup_v2
