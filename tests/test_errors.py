"""Library-level user errors: each is an IspoError with a one-line message naming the problem."""

from __future__ import annotations

import json
import pickle
import shutil
from contextlib import contextmanager

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ispo.embedding.embed import embed, embed_cells
from ispo.errors import IspoError
from ispo.io.vocab import FILES, load_vocab
from ispo.model.load import load_model
from ispo.tokens import tokenize
from support import make_adata


@contextmanager
def raises_one_line(match: str | None = None):
    """Expect an IspoError whose message is one non-empty line (optionally matching)."""
    with pytest.raises(IspoError, match=match) as info:
        yield info
    msg = str(info.value)
    assert msg.strip(), "empty message"
    assert "\n" not in msg, f"message is not one line: {msg!r}"


def _with_X(X) -> ad.AnnData:
    base = make_adata(X.shape[0], seed=0)
    return ad.AnnData(X=X, obs=base.obs, var=base.var)


# --------------------------------------------------------------------------- counts
def test_non_integer_counts(vocab_v1):
    adata = make_adata(4, seed=0)
    X = adata.X.toarray()
    X[1, np.flatnonzero(X[1])[0]] = 1.5
    with raises_one_line("non-integer"):
        tokenize(_with_X(sp.csr_matrix(X)), vocab_v1)


def test_log_normalised_counts(vocab_v1):
    adata = make_adata(4, seed=0)
    with raises_one_line("non-integer"):
        tokenize(_with_X(sp.csr_matrix(np.log1p(adata.X.toarray()))), vocab_v1)


def test_negative_counts(vocab_v1):
    X = make_adata(4, seed=0).X.toarray()
    X[2, 3] = -2.0
    with raises_one_line("negative"):
        tokenize(_with_X(sp.csr_matrix(X)), vocab_v1)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_counts(vocab_v1, bad):
    X = make_adata(4, seed=0).X.toarray()
    X[0, 5] = bad
    with raises_one_line("NaN"):
        tokenize(_with_X(sp.csr_matrix(X)), vocab_v1)
    with raises_one_line("NaN"):
        tokenize(_with_X(X), vocab_v1)  # dense too


def test_bad_counts_in_later_chunk(vocab_v1):
    X = make_adata(10, seed=0).X.toarray()
    X[9, 1] = 0.25
    with raises_one_line("non-integer"):
        tokenize(_with_X(sp.csr_matrix(X)), vocab_v1, chunk_size=3)


def test_missing_layer(vocab_v1):
    with raises_one_line("counts"):
        tokenize(make_adata(4), vocab_v1, layer="counts")


# --------------------------------------------------------------------------- genes
def test_no_gene_ids_found(vocab_v1):
    adata = make_adata(4, ensembl_column=False)
    adata.var_names = [f"UNKNOWN{i}" for i in range(adata.n_vars)]
    with raises_one_line("no gene ids"):
        tokenize(adata, vocab_v1)


def test_ensembl_column_all_missing(vocab_v1):
    adata = make_adata(4)
    adata.var["ensembl_id"] = np.nan
    adata.var_names = [f"UNKNOWN{i}" for i in range(adata.n_vars)]
    with raises_one_line("no gene ids"):
        tokenize(adata, vocab_v1)


def test_no_gene_in_vocabulary(vocab_v1):
    adata = make_adata(4)
    adata.var["ensembl_id"] = [f"ENSMUSG{i:011d}" for i in range(adata.n_vars)]
    with raises_one_line("vocabulary"):
        tokenize(adata, vocab_v1)


def test_missing_gene_key(vocab_v1):
    with raises_one_line("my_ids"):
        tokenize(make_adata(4), vocab_v1, gene_key="my_ids")


# --------------------------------------------------------------------------- vocabularies
def _write_vocab(vocab, root):
    root.mkdir(parents=True, exist_ok=True)
    for key, name in FILES.items():
        with open(root / name, "wb") as fh:
            pickle.dump(getattr(vocab, key), fh)
    return root


def test_vocab_round_trip(vocab_v2, tmp_path):
    loaded = load_vocab(_write_vocab(vocab_v2, tmp_path / "v2"))
    assert loaded.token_dict == vocab_v2.token_dict
    assert loaded.median_dict == vocab_v2.median_dict
    assert loaded.version == 2 and loaded.cls_id == 2 and loaded.eos_id == 3
    assert loaded.max_input == 4096


def test_vocab_dir_missing(tmp_path):
    with raises_one_line("does not exist"):
        load_vocab(tmp_path / "nowhere")


@pytest.mark.parametrize("name", list(FILES.values()))
def test_vocab_dir_missing_a_file(vocab_v1, tmp_path, name):
    root = _write_vocab(vocab_v1, tmp_path / "v1")
    (root / name).unlink()
    with raises_one_line(name):
        load_vocab(root)


def test_corrupt_pickle(vocab_v1, tmp_path):
    root = _write_vocab(vocab_v1, tmp_path / "v1")
    good = (root / "gene_median_dictionary.pkl").read_bytes()
    (root / "gene_median_dictionary.pkl").write_bytes(good[: len(good) // 2])
    with raises_one_line("gene_median_dictionary.pkl"):
        load_vocab(root)
    (root / "gene_median_dictionary.pkl").write_bytes(b"this is not a pickle at all")
    with raises_one_line("gene_median_dictionary.pkl"):
        load_vocab(root)


def test_pickle_of_wrong_type(vocab_v1, tmp_path):
    root = _write_vocab(vocab_v1, tmp_path / "v1")
    with open(root / "token_dictionary.pkl", "wb") as fh:
        pickle.dump([1, 2, 3], fh)
    with raises_one_line("token_dictionary.pkl"):
        load_vocab(root)


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_without_weights(ckpt_v1, tmp_path):
    root = tmp_path / "noweights"
    root.mkdir()
    shutil.copy(ckpt_v1 / "config.json", root / "config.json")
    with raises_one_line("no weights"):
        load_model(root, device="cpu")


def test_checkpoint_without_config(ckpt_v1, tmp_path):
    root = tmp_path / "noconfig"
    root.mkdir()
    shutil.copy(ckpt_v1 / "model.safetensors", root / "model.safetensors")
    with raises_one_line("config.json"):
        load_model(root, device="cpu")


def test_checkpoint_with_damaged_weights(ckpt_v1, tmp_path):
    root = tmp_path / "damaged"
    root.mkdir()
    shutil.copy(ckpt_v1 / "config.json", root / "config.json")
    (root / "model.safetensors").write_bytes(b"\x00" * 100)
    with raises_one_line():
        load_model(root, device="cpu")


def test_checkpoint_config_disagrees_with_weights(ckpt_v1, tmp_path):
    root = tmp_path / "disagree"
    shutil.copytree(ckpt_v1, root)
    cfg = json.loads((root / "config.json").read_text())
    cfg["vocab_size"] += 5
    (root / "config.json").write_text(json.dumps(cfg))
    with raises_one_line("disagree"):
        load_model(root, device="cpu")


def test_vocab_size_mismatch(ckpt_v1, vocab_v2):
    with raises_one_line("tokens"):
        load_model(ckpt_v1, vocab=vocab_v2, device="cpu")


def test_model_path_is_a_file(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with raises_one_line():
        load_model(f, device="cpu")


def test_preset_without_random_init():
    with raises_one_line("random"):
        load_model("gf-6L-30M-i2048", device="cpu")


def test_unknown_preset():
    with raises_one_line("unknown model"):
        load_model("gf-99L-nonexistent", device="cpu")


# --------------------------------------------------------------------------- embedding options
@pytest.fixture(scope="module")
def model_v1(ckpt_v1, vocab_v1):
    return load_model(ckpt_v1, vocab=vocab_v1, device="cpu")


@pytest.mark.parametrize("emb_layer", [3, -2, 1])
def test_bad_emb_layer(model_v1, vocab_v1, emb_layer):
    cells = tokenize(make_adata(3), vocab_v1)
    with raises_one_line("emb_layer"):
        embed_cells(cells, model_v1, emb_layer=emb_layer)
    with raises_one_line("emb_layer"):
        embed(make_adata(3), model_v1, emb_layer=emb_layer)


def test_embed_without_vocab(ckpt_v1):
    model = load_model(ckpt_v1, device="cpu")
    with raises_one_line("vocab"):
        embed(make_adata(3), model)


def test_embed_with_wrong_vocab(model_v1, vocab_v2):
    with raises_one_line():
        embed(make_adata(3), model_v1, vocab=vocab_v2)


def test_embed_all_cells_filtered(model_v1):
    adata = make_adata(3)
    adata.obs["filter_pass"] = 0
    with raises_one_line():
        embed(adata, model_v1)
    # nothing was written on failure
    assert "X_geneformer" not in adata.obsm


def test_obs_is_untouched_by_errors(vocab_v1):
    adata = make_adata(3)
    adata.var["ensembl_id"] = "ENSMUSG00000000001"
    before = adata.obs.copy()
    with pytest.raises(IspoError, match=r"none of the \d+ genes is in the vocabulary .*check the"):
        tokenize(adata, vocab_v1)
    pd.testing.assert_frame_equal(adata.obs, before)
