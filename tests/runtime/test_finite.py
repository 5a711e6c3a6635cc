"""No NaN or Inf passes silently: a run whose embeddings, cosines or shifts are not finite stops
with one line naming the cells, and leaves no output.

The overflow is real, not injected: a checkpoint whose position embeddings past position 32 sit
at fp16's largest value, plus a type embedding of 100, overflows fp16 (65,504 + 100 = Inf) on
every cell longer than 32 tokens, and only there; in fp32 the same model is finite (its
LayerNorm takes the constant offset away).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import ispo
from _scaleout import small_adata, tiny_checkpoint
from ispo.cli.main import main
from ispo.runtime.finite import FiniteCheck, NonFiniteError

LONG = (1, 4)  # input rows of the long cells (45 genes; the others have 5 to 10)
FP16_LIMIT = 65504.0
CELLS = r" of 2 cells \(input rows 1, 4\) are not finite \(NaN or Inf\); computed in float16"
FIX = r"rerun with --precision fp32 \(or bf16"
BATCH = dict(batch_tokens=48)  # a long cell runs alone: short cells never share its padding


@pytest.fixture(scope="module")
def overflow_ckpt(tmp_path_factory):
    from transformers import BertForMaskedLM

    root = tmp_path_factory.mktemp("finite")
    model = BertForMaskedLM.from_pretrained(tiny_checkpoint(root / "base"))
    with torch.no_grad():
        model.bert.embeddings.position_embeddings.weight[32:] = FP16_LIMIT
        model.bert.embeddings.token_type_embeddings.weight[0] += 100.0
    model.save_pretrained(root / "overflow")
    return root / "overflow"


@pytest.fixture(scope="module")
def cells():
    adata = small_adata(6, min_genes=5, max_genes=10)
    X = adata.X.toarray()
    X[list(LONG), :45] = np.arange(1, 46)  # 45 genes, distinct counts: 45 tokens
    adata.X = sp.csr_matrix(X)
    return adata


@pytest.fixture(scope="module")
def model(overflow_ckpt):
    return ispo.load_model(overflow_ckpt, vocab=ispo.demo_vocab(), device="cpu")


def test_fp32_is_finite(model, cells):
    emb = ispo.embed(cells.copy(), model, precision="fp32", **BATCH)
    assert np.isfinite(emb).all()


def test_fp16_overflow_stops_embed_naming_the_long_cells(model, cells):
    with pytest.raises(NonFiniteError, match=f"^embeddings{CELLS}.*{FIX}") as info:
        ispo.embed(cells.copy(), model, precision="fp16", **BATCH)
    assert info.value.rows == list(LONG)
    assert "\n" not in str(info.value)


def test_fp16_overflow_stops_perturb_and_writes_nothing(model, cells, tmp_path):
    out = tmp_path / "r.parquet"
    what = "embeddings, cell_cos_sim and cos_sim"  # each result of the long cells
    with pytest.raises(NonFiniteError, match=f"^{what}{CELLS}.*{FIX}"):
        ispo.perturb(cells.copy(), model, precision="fp16", out=out, **BATCH)
    assert list(tmp_path.iterdir()) == []  # no table, no metadata, no parts folder
    # the corrected command runs at once (no --overwrite, no --resume)
    df = ispo.perturb(cells.copy(), model, precision="fp32", out=out, **BATCH)
    assert len(df) and np.isfinite(df[["cos_sim", "cell_cos_sim"]].to_numpy()).all()


def test_fp16_overflow_on_the_command_line(overflow_ckpt, cells, tmp_path, capsys):
    src = tmp_path / "in.h5ad"
    cells.write_h5ad(src)
    out = tmp_path / "out.h5ad"
    args = ["embed", str(src), "--model", str(overflow_ckpt), "--vocab", "demo"]
    args += ["--precision", "fp16", "--batch-tokens", "48", "--out", str(out)]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("error: embeddings of 2 cells (input rows 1, 4)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad"]


def test_check_names_the_rows_of_the_first_bad_tensor():
    check = FiniteCheck()
    check.add("embeddings", torch.ones(3, 4), np.array([10, 11, 12]))
    shifts = torch.zeros(3, 2)
    shifts[2, 1] = float("nan")
    check.add("shifts", shifts, np.array([20, 20, 21]), torch.bfloat16)
    with pytest.raises(NonFiniteError, match=r"^shifts of 1 cell \(input rows 21\) .*bfloat16"):
        check.check()
    check.check()  # what was checked is forgotten
    check.add("cos_sim", torch.tensor([float("inf")]), np.array([5]))
    with pytest.raises(NonFiniteError, match=r"computed in float32: check the model's weights"):
        check.check()


def test_a_caller_that_reports_nan_itself_gets_the_values(model, cells):
    """``ispo tune`` measures an overflowing setting and marks it infeasible: with its own
    non-strict check, the NaN rows come back instead of stopping the call."""
    tok = ispo.tokenize(cells, ispo.demo_vocab())
    emb = ispo.embed_cells(tok, model, precision="fp16", finite=FiniteCheck(strict=False), **BATCH)
    bad = tok.obs_index[~np.isfinite(emb).all(axis=1)]
    assert sorted(bad.tolist()) == list(LONG)
