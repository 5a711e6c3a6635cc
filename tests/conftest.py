"""Shared fixtures: tiny in-memory vocabularies, tiny AnnData of raw counts, tiny checkpoints.

Everything here is small on purpose (about 100 genes, hidden size 32) so the whole suite runs in
seconds on a laptop CPU. Real data under ``../shared/data`` is used only when present.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ispo.io.vocab import Vocab
from support import make_adata, make_vocab, save_tiny_checkpoint

# No test touches the network: Hugging Face names resolve from a local cache only
# (tests/io/test_hub.py builds one), and child processes inherit this too.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _own_cache_dir(tmp_path_factory):
    """The session's own ispo cache (the measured CPU peak): tests never read or write the
    user's, and every session measures afresh where a benchmark asks for it."""
    before = os.environ.get("ISPO_CACHE_DIR")
    os.environ["ISPO_CACHE_DIR"] = str(tmp_path_factory.mktemp("ispo-cache"))
    yield
    if before is None:
        os.environ.pop("ISPO_CACHE_DIR", None)
    else:
        os.environ["ISPO_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def vocab_v1() -> Vocab:
    return make_vocab(1)


@pytest.fixture(scope="session")
def vocab_v2() -> Vocab:
    return make_vocab(2)


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
def vocab(request, vocab_v1, vocab_v2) -> Vocab:
    return vocab_v1 if request.param == 1 else vocab_v2


@pytest.fixture
def adata_factory():
    return make_adata


@pytest.fixture(scope="session")
def ckpt_v1(tmp_path_factory, vocab_v1) -> Path:
    """V1-style tiny checkpoint (positions up to 2048, as the V1 input size needs)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt_v1"), vocab_v1.size, max_len=2048)


@pytest.fixture(scope="session")
def ckpt_v2(tmp_path_factory, vocab_v2) -> Path:
    """V2-style tiny checkpoint (<pad>=0, <mask>=1, <cls>=2, <eos>=3; positions up to 4096)."""
    return save_tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt_v2"), vocab_v2.size, max_len=4096, seed=1
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-16 BERT checkpoint with the V1 vocabulary size (works with the demo and
    the real V1 dictionaries), saved by transformers itself."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    path = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    BertForMaskedLM(
        BertConfig(
            vocab_size=25426,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=2048,
            hidden_act="relu",
        )
    ).save_pretrained(path)
    return path
