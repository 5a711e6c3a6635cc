"""One input opener: every kind of input gives the same Source, tokens and errors."""

from __future__ import annotations

import pickle

import anndata as ad
import numpy as np
import pytest

import ispo
from _scaleout import small_adata
from ispo.embedding.stream import UnitReader
from ispo.errors import IspoError
from ispo.io.read import MemorySource, input_vocab, open_input, open_with_vocab, read_input
from ispo.tokens import Tokenizer, tokenize


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    a = small_adata(9, seed=3)
    a.write_h5ad(root / "a.h5ad")
    a.write_zarr(root / "a.zarr")
    return a, root


def _same_tokens(x, y) -> None:
    np.testing.assert_array_equal(x.tokens, y.tokens)
    np.testing.assert_array_equal(x.offsets, y.offsets)
    np.testing.assert_array_equal(x.obs_index, y.obs_index)


@pytest.mark.parametrize("name", ["a.h5ad", "a.zarr"])
def test_files_and_anndata_tokenize_alike(inputs, name):
    a, root = inputs
    voc = ispo.demo_vocab()
    with open_input(root / name) as src:
        assert src.spec == str(root / name) and src.n_obs == 9
        assert list(src.obs_names) == list(a.obs_names)
        _same_tokens(tokenize(src, voc), tokenize(a, voc))
    assert isinstance(open_input(a), MemorySource) and open_input(a).spec is None
    backed = read_input(root / "a.h5ad")
    assert backed.isbacked
    _same_tokens(tokenize(backed, voc), tokenize(a, voc))


def test_demo_input_brings_its_vocabulary():
    src, voc = open_with_vocab("demo:7", None)
    assert src.n_obs == 7 and src.name == "demo:7" and voc.source == "demo"
    assert read_input("demo:5").n_obs == 5


@pytest.mark.parametrize(
    ("source", "vocab", "match"),
    [
        ("demo:x", "demo", "is not demo:N with a number"),
        ("nowhere.h5ad", "demo", "does not exist"),
        ("nowhere.h5ad", None, "--vocab DIR is required"),
    ],
)
def test_bad_inputs_are_one_line(tmp_path, source, vocab, match):
    with pytest.raises(IspoError, match=match):
        open_with_vocab(str(tmp_path / source) if source.endswith("h5ad") else source, vocab)


def test_truncated_file_names_the_fix(inputs, tmp_path):
    _, root = inputs
    data = (root / "a.h5ad").read_bytes()
    (tmp_path / "t.h5ad").write_bytes(data[: len(data) // 3])
    with pytest.raises(IspoError, match=r"complete \.h5ad"):
        open_input(tmp_path / "t.h5ad")
    with pytest.raises(IspoError, match=r"complete \.h5ad/\.zarr"):
        read_input(tmp_path / "t.h5ad")


def test_input_vocab_default_and_demo_name():
    assert input_vocab("demo", None).source == "demo"
    assert input_vocab("x.h5ad", "demo").source == "demo"


def test_unit_reader_reopens_a_file_in_another_process(inputs):
    """What crosses to a spawned worker is the path, never the open HDF5 handle."""
    _, root = inputs
    src = open_input(root / "a.h5ad")
    tok = Tokenizer.build(src.var, ispo.demo_vocab())
    reader = UnitReader(tok, 4, src.n_obs, src.spec, src)
    copy = pickle.loads(pickle.dumps(reader))
    assert copy.src is None and reader.src is src  # the original keeps its handle
    for u in range(3):
        _same_tokens(copy(u)[1], reader(u)[1])
    src.close()
    whole = tokenize(ad.read_h5ad(root / "a.h5ad"), ispo.demo_vocab())
    got = np.concatenate([copy(u)[1].obs_index for u in range(3)])
    np.testing.assert_array_equal(got, whole.obs_index)
