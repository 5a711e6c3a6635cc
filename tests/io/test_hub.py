"""Models and dictionaries by their Hugging Face hub name, resolved offline from a cache laid out
as ``huggingface_hub`` lays it out (``models--OWNER--NAME/{blobs,snapshots/<commit>,refs/main}``,
snapshot files linking to blobs). ``HF_HUB_OFFLINE=1`` throughout: no test touches the network.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import anndata as ad
import pytest
import torch

import ispo
from _scaleout import tiny_checkpoint, write_small
from ispo.cli.main import main
from ispo.errors import IspoError
from ispo.io.hub import HubName, parse
from ispo.io.vocab import FILES
from support import make_vocab

OLD, NEW = "a" * 40, "b" * 40  # two commits of the repository; refs/main points at NEW
MODEL = "ctheodoris/Geneformer/Geneformer-V1-10M"


def _put(repo: Path, commit: str, rel: str, data: bytes) -> None:
    """One file of a snapshot, as huggingface_hub stores it: a blob named by its hash and a
    relative symlink to it under ``snapshots/<commit>/``."""
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = repo / "snapshots" / commit / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))


def _dictionaries(repo: Path, commit: str, vocab, folder: str, corpus: str) -> None:
    for key, name in FILES.items():
        rel = f"{folder}/{Path(name).stem}_{corpus}.pkl"
        _put(repo, commit, rel, pickle.dumps(getattr(vocab, key)))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A hub cache with Geneformer-V1-10M at two commits (other weights) and both dictionaries."""
    root = tmp_path_factory.mktemp("hf")
    repo = root / "hub" / "models--ctheodoris--Geneformer"
    for commit, seed in ((OLD, 1), (NEW, 0)):
        ckpt = tiny_checkpoint(root / f"ckpt-{seed}", seed=seed)
        for name in ("config.json", "model.safetensors"):
            _put(repo, commit, f"Geneformer-V1-10M/{name}", (ckpt / name).read_bytes())
    _dictionaries(repo, NEW, ispo.demo_vocab(), "geneformer/gene_dictionaries_30m", "gc30M")
    _dictionaries(repo, NEW, make_vocab(2), "geneformer", "gc104M")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(NEW)
    return root


@pytest.fixture
def offline(cache, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)  # HF_HOME/hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        (MODEL, HubName("ctheodoris/Geneformer", "Geneformer-V1-10M")),
        (f"{MODEL}@v1.0", HubName("ctheodoris/Geneformer", "Geneformer-V1-10M", "v1.0")),
        (
            "ctheodoris/Geneformer@abc/Geneformer-V1-10M",
            HubName("ctheodoris/Geneformer", "Geneformer-V1-10M", "abc"),
        ),
        (
            "hf://ctheodoris/Geneformer/Geneformer-V1-10M/",
            HubName("ctheodoris/Geneformer", "Geneformer-V1-10M"),
        ),
        ("ctheodoris/Geneformer", HubName("ctheodoris/Geneformer")),
        ("geneformer-v1", HubName("ctheodoris/Geneformer", "geneformer/gene_dictionaries_30m")),
        ("geneformer-v2@abc", HubName("ctheodoris/Geneformer", "geneformer", "abc")),
        ("gf-6L-10M-i2048", None),
        ("a/b@x/c@y", None),
    ],
)
def test_spellings(spec, want):
    assert parse(spec) == want


def test_model_and_dictionaries_by_name(offline, cache):
    model = ispo.load_model(MODEL, vocab="geneformer-v1", device="cpu")
    local = ispo.load_model(cache / "ckpt-0", device="cpu")  # the same files, by their folder
    assert model.state_dict.keys() == local.state_dict.keys()
    assert all(torch.equal(model.state_dict[k], local.state_dict[k]) for k in local.state_dict)
    assert model.name == f"{MODEL}@{NEW}"  # pinned to the commit main pointed at
    assert model.metadata()["hub"] == {
        "repo": "ctheodoris/Geneformer",
        "folder": "Geneformer-V1-10M",
        "revision": None,
        "commit": NEW,
    }
    assert model.vocab.token_dict == ispo.demo_vocab().token_dict
    assert model.vocab.source == f"ctheodoris/Geneformer/geneformer/gene_dictionaries_30m@{NEW}"
    v2 = ispo.load_vocab("geneformer-v2")
    assert v2.version == 2 and v2.token_dict == make_vocab(2).token_dict


def test_revision_pins_other_weights(offline, cache):
    old = ispo.load_model(f"{MODEL}@{OLD}", device="cpu")
    other = ispo.load_model(cache / "ckpt-1", device="cpu")
    assert all(torch.equal(old.state_dict[k], other.state_dict[k]) for k in other.state_dict)
    assert old.metadata()["hub"]["commit"] == OLD and old.metadata()["hub"]["revision"] == OLD


def test_not_cached_while_offline_is_one_line(offline):
    with pytest.raises(IspoError, match=r"is not in the Hugging Face cache .* HF_HUB_OFFLINE") as e:
        ispo.load_model("ctheodoris/Geneformer/Geneformer-V2-316M", device="cpu")
    assert "\n" not in str(e.value) and "hf download ctheodoris/Geneformer" in str(e.value)
    with pytest.raises(IspoError, match=r"--vocab someone/dictionaries is not a local folder"):
        ispo.load_vocab("someone/dictionaries")


def test_embed_records_the_commit(offline, tmp_path):
    src = write_small(tmp_path / "in.h5ad", 4)
    out = tmp_path / "out.h5ad"
    main(["-q", "embed", str(src), "--model", MODEL, "--vocab", "geneformer-v1", "--out", str(out)])
    meta = ad.read_h5ad(out, backed="r").uns["geneformer"]
    assert meta["hub"]["commit"] == NEW and meta["model"] == f"{MODEL}@{NEW}"
    assert meta["vocab"].endswith(f"gene_dictionaries_30m@{NEW}")


def test_missing_local_folder_is_not_taken_for_a_hub_name(offline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(IspoError, match=r"^--model runs/ckpt does not exist: give a checkpoint"):
        ispo.load_model("runs/ckpt", device="cpu")
