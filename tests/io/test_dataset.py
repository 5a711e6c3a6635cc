"""Tokenized dataset folders (Geneformer's ``TranscriptomeTokenizer`` output) as input.

Oracle: the folders are written by the ``datasets`` package itself (``Dataset.from_dict(...)
.save_to_disk``) in Geneformer's layout (``input_ids`` as int64 lists, ``length``, the cell
attributes), from the tokens of the same cells' ``.h5ad``; embeddings and perturbations of the
folder must equal those of the ``.h5ad`` (whose own parity with transformers is tested in
``embedding/test_parity.py`` and ``perturbation/test_engine.py``), and the embeddings also equal
an independent transformers forward (``hf_reference``).
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import ispo
from hf_reference import embed_reference, load_reference
from ispo.embedding.stream import embed_file
from ispo.errors import IspoError
from ispo.io.read import open_input, read_input
from ispo.model.load import load_model
from ispo.tokens import iter_tokenize, tokenize
from support import make_adata

datasets = pytest.importorskip("datasets")


def save_dataset(path, token_lists, **attrs):
    """A folder as Geneformer's tokenizer writes it (``input_ids`` int64 lists, ``length``)."""
    data = {"input_ids": token_lists, "length": [len(t) for t in token_lists], **attrs}
    datasets.Dataset.from_dict(data).save_to_disk(str(path))
    return path


def dataset_of(adata, vocab, path, max_input=None):
    """The tokenized cells of ``adata`` as a dataset folder, named by ``cell_id``."""
    cells = tokenize(adata, vocab, max_input=max_input)
    names = adata.obs_names[cells.obs_index].tolist()
    state = adata.obs["state"].to_numpy()[cells.obs_index].tolist()
    return save_dataset(path, cells.to_lists(), cell_id=names, state=state), cells


@pytest.fixture
def adata():
    a = make_adata(30, seed=3)
    a.obs["state"] = ["x", "y", "z"] * 10
    return a


@pytest.mark.parametrize("version", [1, 2])
def test_embeddings_equal_the_h5ad_and_transformers(
    tmp_path, adata, version, vocab_v1, vocab_v2, ckpt_v1, ckpt_v2
):
    vocab, ckpt = (vocab_v1, ckpt_v1) if version == 1 else (vocab_v2, ckpt_v2)
    model = load_model(ckpt, vocab=vocab, device="cpu")
    folder, cells = dataset_of(adata, vocab, tmp_path / "cells.dataset")
    h5 = tmp_path / "cells.h5ad"
    adata.write_h5ad(h5)
    kw = dict(vocab=vocab, chunk_cells=7, workers=0)
    embed_file(h5, tmp_path / "a.h5ad", model, **kw)
    embed_file(folder, tmp_path / "b.h5ad", model, **kw)
    a, b = ad.read_h5ad(tmp_path / "a.h5ad"), ad.read_h5ad(tmp_path / "b.h5ad")
    assert b.obs_names.tolist() == a.obs_names[cells.obs_index].tolist()
    assert b.obs["state"].tolist() == a.obs["state"].to_numpy()[cells.obs_index].tolist()
    assert b.n_vars == 0 and b.X is None  # no counts in a tokenized dataset
    np.testing.assert_array_equal(b.obsm["X_geneformer"], a.obsm["X_geneformer"][cells.obs_index])
    ref = embed_reference(load_reference(ckpt), cells.to_lists(), -1, "mean", version == 2)
    np.testing.assert_allclose(b.obsm["X_geneformer"], ref.numpy(), rtol=0, atol=2e-5)


def test_perturbations_equal_the_h5ad(tmp_path, adata, vocab_v2, ckpt_v2):
    model = load_model(ckpt_v2, vocab=vocab_v2, device="cpu")
    folder, _ = dataset_of(adata, vocab_v2, tmp_path / "cells.dataset")
    kw = dict(
        perturb_type="delete",
        emb_mode="cls_and_gene",
        cell_states={"state_key": "state", "start_state": "x", "goal_state": "y"},
        cell_filter={"state": ["x", "y"]},
    )
    want = ispo.perturb(adata, model, **kw)
    got = ispo.perturb(str(folder), model, **kw)
    cols = ["perturbed_ids", "cos_sim", "cell_cos_sim", "shift_y"]
    pd.testing.assert_frame_equal(got[cols], want[cols])
    assert got["cell_id"].tolist() == want["cell_id"].tolist()
    pd.testing.assert_frame_equal(
        got.attrs["gene_table"].drop(columns="obs_index"),
        want.attrs["gene_table"].drop(columns="obs_index"),
    )


def test_the_tokens_stay_on_disk(tmp_path, vocab_v1):
    """Opening a dataset maps its Arrow files: the tokens are not copied into memory."""
    rng = np.random.default_rng(0)
    tokens = [rng.integers(2, vocab_v1.size, 1500).tolist() for _ in range(400)]  # 4.8 MB
    folder = save_dataset(tmp_path / "big.dataset", tokens, cell_type=["t"] * 400)
    before = pa.total_allocated_bytes()
    src = open_input(folder)
    assert pa.total_allocated_bytes() - before < 500_000
    assert src.n_obs == 400 and list(src.obs.columns) == ["length", "cell_type"]
    got, lens = src.token_rows(398, 400)
    assert got.tolist() == tokens[398] + tokens[399] and lens.tolist() == [1500, 1500]


@pytest.mark.parametrize(
    "case,match",
    [
        ("v1_tokens_v2_vocab", "do not all start with <cls> and end with <eos>"),
        ("v2_tokens_v1_vocab", r"starts with token 2 and ends with 3 .*use the V2 dictionaries"),
        ("too_long", "has 13 tokens but the model takes 12: tokenize with model_input_size=12"),
        ("unknown_token", "holds token 999, not a gene of the vocabulary"),
        ("padding", r"holds token 0, not a gene of the vocabulary .*0 is padding"),
        ("layer", "--layer and --gene-key apply to count inputs"),
    ],
)
def test_bad_tokens_refused(tmp_path, vocab_v1, vocab_v2, ckpt_v1, case, match):
    v2_cell = [2, 10, 11, 12, 3]
    lists = {
        "v1_tokens_v2_vocab": [[10, 11, 12]],
        "v2_tokens_v1_vocab": [v2_cell, v2_cell],
        "too_long": [list(range(5, 18))],
        "unknown_token": [[5, 999]],
        "padding": [[5, 6, 0, 0]],
        "layer": [[5, 6]],
    }[case]
    vocab = vocab_v2 if case == "v1_tokens_v2_vocab" else vocab_v1
    folder = save_dataset(tmp_path / "d.dataset", lists)
    src = open_input(folder)
    kw = {"layer": "counts"} if case == "layer" else {}
    with pytest.raises(IspoError, match=match) as info:
        list(iter_tokenize(src, vocab, max_input=12, **kw))
    assert "\n" not in str(info.value)


def test_bad_folders_refused(tmp_path):
    ds = datasets.Dataset.from_dict({"input_ids": [[5, 6]], "length": [2]})
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(IspoError, match=r"holds several splits \(test, train\): give one split"):
        open_input(tmp_path / "dd")
    datasets.Dataset.from_dict({"ids": [[5]]}).save_to_disk(str(tmp_path / "noids"))
    with pytest.raises(IspoError, match="has no 'input_ids' column"):
        open_input(tmp_path / "noids")
    save_dataset(tmp_path / "len", [[5, 6, 7]])
    table = tmp_path / "len" / "dataset_info.json"
    assert json.loads(table.read_text())["features"]["length"]
    bad = tmp_path / "badlen"
    datasets.Dataset.from_dict({"input_ids": [[5, 6, 7]], "length": [4]}).save_to_disk(str(bad))
    with pytest.raises(IspoError, match="'length' of cell 0 is 4 but it has 3 tokens"):
        open_input(bad)
    (tmp_path / "len" / "state.json").write_text("{")
    with pytest.raises(IspoError, match=r"cannot read the dataset .*save_to_disk folder"):
        open_input(tmp_path / "len")


def test_commands_that_need_counts_refuse_a_dataset_folder(tmp_path):
    """tune and bench-isp read counts (read_input): a tokenized folder gets one line."""
    save_dataset(tmp_path / "ds", [[3, 4, 5], [6, 7]])
    with pytest.raises(IspoError, match=r"tokenized dataset folder: .* give the \.h5ad"):
        read_input(tmp_path / "ds")
