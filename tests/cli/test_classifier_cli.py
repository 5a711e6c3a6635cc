"""``ispo embed`` and ``ispo perturb`` with a fine-tuned cell classifier as ``--model``: the class
columns are written, and ``--no-probs`` leaves them out.

Oracle: the Python API the commands wrap (``ispo.embed`` / ``ispo.perturb`` on the same cells;
their values are checked against transformers in tests/embedding/ and tests/perturbation/).
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import ispo
from _scaleout import small_adata
from ispo.cli.main import main
from support import CLASSES, save_finetuned_checkpoint

PROBS = [f"prob_{c}" for c in CLASSES]
DELTAS = [f"delta_prob_{c}" for c in CLASSES]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier_cli")
    data = root / "d.h5ad"
    small_adata(6).write_h5ad(data)
    ckpt = save_finetuned_checkpoint(root / "clf", 25_426, "sequence", n_layers=2, hidden=16)
    return str(data), str(ckpt)


def test_embed_writes_the_class_columns(files, tmp_path):
    data, ckpt = files
    out = tmp_path / "e.h5ad"
    main(["-q", "embed", data, "--vocab", "demo", "--model", ckpt, "--out", str(out)])
    got = ad.read_h5ad(out)
    want = ad.read_h5ad(data)
    ispo.embed(want, ispo.load_model(ckpt, vocab=ispo.demo_vocab(1), device="cpu"))
    np.testing.assert_allclose(got.obs[PROBS], want.obs[PROBS], atol=1e-6, rtol=0)
    assert got.obs["pred_class"].tolist() == want.obs["pred_class"].tolist()
    assert list(got.uns["geneformer"]["classes"]) == list(CLASSES)
    bare = tmp_path / "bare.h5ad"
    args = ["-q", "embed", data, "--vocab", "demo", "--model", ckpt, "--out", str(bare)]
    main([*args, "--no-probs"])
    assert list(ad.read_h5ad(bare).obs.columns) == [*ad.read_h5ad(data).obs.columns,
                                                    "geneformer_embedded"]  # fmt: skip


def test_perturb_writes_the_class_columns(files, tmp_path):
    data, ckpt = files
    out = tmp_path / "p.parquet"
    args = ["-q", "perturb", data, "--vocab", "demo", "--model", ckpt, "--max-ncells", "3"]
    main([*args, "--out", str(out)])
    got = pd.read_parquet(out)
    assert json.loads(out.with_suffix(".json").read_text())["classes"] == list(CLASSES)
    want = ispo.perturb(
        ad.read_h5ad(data),
        ispo.load_model(ckpt, vocab=ispo.demo_vocab(1), device="cpu"),
        max_ncells=3,
    )
    cols = [*PROBS, *DELTAS, "pred_class", "orig_pred_class"]
    pd.testing.assert_frame_equal(got[cols], want[cols], atol=1e-6)
    bare = tmp_path / "bare.parquet"
    main([*args, "--out", str(bare), "--no-probs"])
    assert not set(cols) & set(pd.read_parquet(bare).columns)
    assert "classes" not in json.loads(bare.with_suffix(".json").read_text())
