"""Perturbing with fine-tuned checkpoints: the three layouts perturb as transformers' own classes
compute, and a cell classifier's probabilities after each perturbation, and their change, equal
independent forwards of the perturbed and the original cell.

Oracle: ``tests/hf_reference.py``: each perturbed gene list built by hand (gene g deleted from
the cell's list), ``BertForSequenceClassification.from_pretrained`` logits of it and of the
original, one unpadded forward each; cosines from ``perturbed_row`` on the encoder of the
layout's own transformers class.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import ispo
from hf_reference import class_probs, load_encoder_reference, perturbed_row
from ispo import faults
from ispo.errors import IspoError
from ispo.faults import InjectedFault
from support import CLASSES, FINETUNED, make_adata, make_vocab, save_finetuned_checkpoint

FP32_ATOL = 1e-5


@pytest.fixture(scope="module")
def vocabs():
    return {1: make_vocab(1), 2: make_vocab(2)}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, vocabs) -> dict:
    root = tmp_path_factory.mktemp("finetuned_perturb")
    return {
        (layout, v): save_finetuned_checkpoint(
            root / f"{layout}_v{v}", vocab.size, layout, max_len=2048 * v, seed=10 + v
        )
        for layout in FINETUNED
        for v, vocab in vocabs.items()
    }


@pytest.fixture(scope="module")
def adata():
    a = make_adata(4, seed=5, density=0.15)  # ~18 genes a cell: every deletion checked
    a.obs["state"] = ["stim", "ctrl", "stim", "ctrl"]
    return a


def _cells(adata, vocab) -> dict[int, list[int]]:
    """Each tokenized cell's token list, by input row."""
    cells = ispo.tokenize(adata, vocab)
    return dict(zip(cells.obs_index.tolist(), cells.to_lists()))


@pytest.mark.parametrize(
    ("version", "emb_layer", "layout"),
    [(1, -1, "padded"), (1, 0, "padded"), (2, -1, "padded"), (2, 0, "padded"), (1, -1, "packed")],
)
def test_delta_prob_equals_transformers_of_the_perturbed_cell(
    ckpts, vocabs, adata, version, emb_layer, layout
):
    vocab, ckpt = vocabs[version], ckpts["sequence", version]
    model = ispo.load_model(ckpt, vocab=vocab, device="cpu")
    df = ispo.perturb(adata, model, emb_layer=emb_layer, batch_tokens=256, layout=layout)
    cells = _cells(adata, vocab)
    lists, origs = [], []
    for obs, gene in zip(df["obs_index"], df["perturbed_ids"]):
        toks = cells[obs]
        g = vocab.token_dict[gene]
        lists.append([t for t in toks if t != g])  # <cls>/<eos> stay where they are (V2)
        origs.append(toks)
    after = class_probs(ckpt, lists).numpy()
    before = class_probs(ckpt, origs).numpy()
    for j, c in enumerate(CLASSES):
        np.testing.assert_allclose(df[f"prob_{c}"], after[:, j], atol=FP32_ATOL, rtol=0)
        want = after[:, j] - before[:, j]
        np.testing.assert_allclose(df[f"delta_prob_{c}"], want, atol=FP32_ATOL, rtol=0)
    assert df["pred_class"].tolist() == [CLASSES[k] for k in after.argmax(1)]
    assert df["orig_pred_class"].tolist() == [CLASSES[k] for k in before.argmax(1)]
    assert df.attrs["metadata"]["classes"] == list(CLASSES)
    assert len(df) > 40 and df["delta_prob_stim"].abs().max() > 1e-3  # real changes


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("layout", FINETUNED)
def test_each_layout_perturbs_as_transformers(ckpts, vocabs, adata, layout, version):
    vocab, ckpt = vocabs[version], ckpts[layout, version]
    model = ispo.load_model(ckpt, vocab=vocab, device="cpu")
    df = ispo.perturb(adata, model, max_ncells=2)
    hf = load_encoder_reference(ckpt, layout)
    cells = _cells(adata, vocab)
    cls_eos = (vocab.cls_id, vocab.eos_id) if version == 2 else None
    for row in df.itertuples():
        toks = cells[row.obs_index]
        genes = toks[1:-1] if cls_eos else toks
        g = vocab.token_dict[row.perturbed_ids]
        want = perturbed_row(hf, genes, [t for t in genes if t != g], [g], -1, cls_eos)
        assert abs(row.cos_sim - want["cos_sim"]) < FP32_ATOL
        assert abs(row.cell_cos_sim - want["cell_cos_sim"]) < FP32_ATOL
    has_probs = "pred_class" in df.columns
    assert has_probs is (layout == "sequence")


def test_written_table_and_metadata(ckpts, vocabs, adata, tmp_path):
    model = ispo.load_model(ckpts["sequence", 1], vocab=vocabs[1], device="cpu")
    states = {"state_key": "state", "start_state": "stim", "goal_state": "ctrl"}
    mem = ispo.perturb(adata, model, cell_states=states)
    out = tmp_path / "p.parquet"
    empty = ispo.perturb(
        adata, model, cell_states=states, out=out, shard_cells=1, load_result=False
    )
    pd.testing.assert_frame_equal(pd.read_parquet(out), mem)
    assert list(empty.columns) == list(mem.columns)  # typed like a full table
    assert (empty.dtypes == mem.dtypes).all()
    assert json.loads(out.with_suffix(".json").read_text())["classes"] == list(CLASSES)
    probs = [f"{p}{c}" for p in ("prob_", "delta_prob_") for c in CLASSES]
    probs += ["pred_class", "orig_pred_class"]
    assert mem.columns[-len(probs) - 1 :].tolist() == ["shift_ctrl", *probs]
    bare = ispo.perturb(adata, model.without_classifier(), cell_states=states)
    pd.testing.assert_frame_equal(bare, mem.drop(columns=probs))


def test_resume_without_probabilities_refused(ckpts, vocabs, adata, tmp_path, monkeypatch):
    """A stopped run with class probabilities cannot be continued without them (its shards
    have the columns), nor the other way round."""
    model = ispo.load_model(ckpts["sequence", 1], vocab=vocabs[1], device="cpu")
    out = tmp_path / "r.parquet"
    monkeypatch.setenv(faults.ENV, "crash_after_shard:2")
    faults.reset()
    with pytest.raises(InjectedFault, match=r"ISPO_FAULT: crash after shard"):
        ispo.perturb(adata, model, out=out, shard_cells=1)
    monkeypatch.undo()
    with pytest.raises(IspoError, match=r"was made with other options or data"):
        ispo.perturb(adata, model.without_classifier(), out=out, shard_cells=1, resume=True)
    done = ispo.perturb(adata, model, out=out, shard_cells=1, resume=True)
    pd.testing.assert_frame_equal(done, ispo.perturb(adata, model, shard_cells=1))
