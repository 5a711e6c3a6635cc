"""One trial's measurement, unfaked: a bf16 trial scored against fp32, a real fp16 overflow (NaN)
recorded as infeasible, and the perturbation check of a search for ``ispo perturb``.

References are independent of the code under test: fp32 embeddings and delete-all values from
Hugging Face ``transformers`` (``tests/hf_reference.py``), cosines with numpy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from tune_helpers import space, study_trials

import ispo
from hf_reference import embed_reference, load_reference, perturbed_row
from ispo.config import load_settings
from ispo.tuning import tune
from ispo.tuning.measure import agreement
from ispo.tuning.options import Limits
from support import make_adata, make_vocab, save_tiny_checkpoint


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_a_bf16_trial_is_scored_against_fp32(tiny_model_dir, model, cells, tmp_path):
    res = tune(
        cells, model, out=tmp_path / "t", n_trials=2, space=space(precision=["fp32", "bf16"])
    )
    rows = {t["settings"]["precision"]: t for t in res.summary["trials"]}
    fp32 = embed_reference(load_reference(tiny_model_dir), cells.to_lists(), -1, "mean", False)
    adata = ispo.demo_adata(4)
    ispo.embed(adata, model, precision="bf16", batch_tokens=8192)
    bf16 = np.asarray(adata.obsm["X_geneformer"], dtype=np.float64)
    cos = cosines(bf16, fp32.numpy().astype(np.float64))
    assert rows["bf16"]["cos_mean"] == pytest.approx(cos.mean(), abs=1e-6)
    assert rows["bf16"]["cos_min"] == pytest.approx(cos.min(), abs=1e-6)
    assert rows["bf16"]["cos_min"] < 1 - 1e-7  # bf16 really ran: it is not fp32's answer
    assert rows["fp32"]["cos_min"] == pytest.approx(1.0, abs=1e-6)
    assert rows["bf16"]["feasible"] == (cos.mean() >= 0.999 and cos.min() >= 0.995)


@pytest.fixture(scope="module")
def overflowing(tiny_model_dir, tmp_path_factory):
    """The tiny model with its first feed-forward layer scaled 1e4 x 1e4: fp32 and bf16 carry
    its activations, fp16 (largest value 65,504) overflows to inf, then NaN in LayerNorm."""
    from transformers import BertForMaskedLM

    hf = BertForMaskedLM.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        hf.bert.encoder.layer[0].intermediate.dense.weight.mul_(1e4)
        hf.bert.encoder.layer[0].output.dense.weight.mul_(1e4)
    path = tmp_path_factory.mktemp("overflow")
    hf.save_pretrained(path)
    return ispo.load_model(str(path), vocab=ispo.demo_vocab(), device="cpu")


def test_a_nan_trial_is_infeasible_and_the_study_resumes(overflowing, cells, tmp_path):
    out = tmp_path / "t"
    both = space(precision=["fp32", "fp16"])
    res = tune(cells, overflowing, out=out, n_trials=2, space=both, repeats=1)
    rows = {t["settings"]["precision"]: t for t in res.summary["trials"]}
    assert rows["fp32"]["feasible"] and rows["fp32"]["cos_min"] == pytest.approx(1.0, abs=1e-6)
    fp16 = rows["fp16"]
    assert fp16["state"] == "complete" and not fp16["feasible"]
    assert fp16["cos_mean"] is None and fp16["cos_min"] is None
    assert fp16["reason"].startswith("not finite: 4 of 4 cells' embeddings")
    assert res.best is not None and str(res.best.precision) == "fp32"
    json.loads((out / "summary.json").read_text())  # strict JSON: no NaN
    # later calls resume the study and rewrite the outputs (no NaN reached optuna or JSON)
    again = tune(cells, overflowing, out=out, n_trials=3, space=both, repeats=1)
    assert again.summary["n_trials"] == 2  # the space is exhausted: nothing new to measure
    assert [t.state.name for t in study_trials(out)] == ["COMPLETE", "COMPLETE"]


@pytest.fixture(scope="module")
def short_cells_model(tmp_path_factory):
    """A 3-layer checkpoint on a 100-gene vocabulary and 6 cells of about 40 genes (delete-all
    of the shortest is about 40 perturbations)."""
    vocab = make_vocab(1)
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("isp"), vocab.size, max_len=2048)
    model = ispo.load_model(str(path), vocab=vocab, device="cpu")
    adata = make_adata(6)
    return path, model, adata, ispo.tokenize(adata, vocab)


def delete_all_reference(path, lists: list[list[int]]) -> np.ndarray:
    """Delete-all values of the cells, fp32, by Hugging Face: (perturbations, 2)."""
    hf = load_reference(path)
    rows = []
    for genes in lists:
        for g in genes:
            new = [x for x in genes if x != g]
            r = perturbed_row(hf, genes, new, [g], -1)
            rows.append([r["cos_sim"], r["cell_cos_sim"]])
    return np.array(rows)


def test_a_search_for_perturb_checks_the_delete_all_shifts(short_cells_model, tmp_path):
    path, model, adata, cells = short_cells_model
    shortest = int(np.argmin(cells.lengths))
    res = tune(
        cells,
        model,
        out=tmp_path / "t",
        n_trials=2,
        space=space(precision=["fp32", "bf16"]),
        isp_cells=1,
        isp_tolerance=1e-5,
        repeats=1,
    )
    rows = {t["settings"]["precision"]: t for t in res.summary["trials"]}
    ref = delete_all_reference(path, [cells.cell(shortest).tolist()])
    sub = adata[[int(cells.obs_index[shortest])]].copy()
    got = ispo.perturb(sub, model, genes="all", precision="bf16", batch_tokens=8192)
    bf16 = got[["cos_sim", "cell_cos_sim"]].to_numpy(np.float64)
    assert rows["bf16"]["isp_max_shift_diff"] == pytest.approx(np.abs(bf16 - ref).max(), abs=2e-6)
    assert rows["fp32"]["isp_max_shift_diff"] < 1e-5 < rows["bf16"]["isp_max_shift_diff"]
    assert rows["bf16"]["cos_mean"] > 0.999  # the embeddings pass: the perturbations do not
    assert rows["bf16"]["reason"].startswith("ISP max |shift difference|")
    assert str(res.best.precision) == "fp32"
    best = (tmp_path / "t" / "best.yaml").read_text()
    assert "ISP max |shift difference| <= 1e-05 on 1 cell(s)' delete-all" in best
    assert yaml.safe_load(best)["perturb"]["precision"] == "fp32"
    assert load_settings(tmp_path / "t" / "best.yaml", command="perturb") == res.best


def test_an_embedding_search_leaves_perturb_out_of_best_yaml(model, cells, tmp_path):
    tune(cells, model, out=tmp_path / "t", n_trials=1, space=space(), repeats=1)
    best = (tmp_path / "t" / "best.yaml").read_text()
    assert set(yaml.safe_load(best)) == {"embed"}
    assert "not checked for ispo perturb" in best


def test_infinite_embeddings_leave_no_nan_figure():
    """An overflow can leave inf rather than NaN, whose cosine is NaN (inf / inf): the figures
    are None and the count says which results were not finite."""
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    emb = np.array([[1.0, 0.0], [np.inf, 1.0], [1.0, 1.0]])
    got = agreement(emb, ref, np.array([[0.9, 0.99], [np.nan, 0.5]]), np.ones((2, 2)))
    assert got["nonfinite"] == "1 of 3 cells' embeddings and 1 of 2 perturbation outputs"
    assert got["cos_mean"] is got["cos_min"] is got["isp_max_shift_diff"] is None
    values, reason = Limits(0.999, 0.995, None, 1, 1e-4).check(got)
    assert all(np.isfinite(values)) and reason.startswith("not finite: 1 of 3 cells'")
    ok = agreement(ref * 2.0, ref, np.array([[0.9, 0.99]]), np.array([[0.9, 0.98]]))
    assert ok["cos_mean"] == pytest.approx(1.0) and ok["cos_min"] == pytest.approx(1.0)
    assert ok["nonfinite"] is None
    assert ok["isp_max_shift_diff"] == pytest.approx(0.01)
