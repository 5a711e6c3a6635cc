"""``ispo.finetune``'s saved folder against transformers, its split, metrics and figures.

Oracle: ``transformers.AutoModelForSequenceClassification.from_pretrained`` of the saved folder,
run on the cells' token lists padded by hand; its softmax must equal ispo's predicted
probabilities.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification

import ispo
from ispo.model.head import class_names
from ispo.tracking import Tracker
from ispo.training import CellClassifier, DataOptions, TrainSettings

FAST = TrainSettings(epochs=2, lr=2e-3, precision="fp32", val_size=0.25, test_size=0.25)


class Recorder(Tracker):
    """A tracker that keeps what it is sent (the interface wandb and MLflow sit behind)."""

    def __init__(self) -> None:
        self.logged: list[tuple[int | None, dict]] = []

    def log(self, metrics: dict, step: int | None = None) -> None:
        self.logged.append((step, metrics))


@pytest.fixture(scope="module")
def trained(ft_ckpt, ft_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "clf"
    tracker = Recorder()
    metrics = ispo.finetune(
        ft_data, ft_ckpt, out, DataOptions("state", "demo"), FAST, device="cpu", progress=False,
        tracker=tracker,
    )  # fmt: skip
    return out, metrics, tracker


def _hf_probabilities(folder, token_lists: list[list[int]]) -> np.ndarray:
    hf = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    width = max(map(len, token_lists))
    ids = torch.zeros(len(token_lists), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, x in enumerate(token_lists):
        ids[i, : len(x)], mask[i, : len(x)] = torch.tensor(x), 1
    with torch.no_grad():
        return torch.softmax(hf(input_ids=ids, attention_mask=mask).logits, -1).numpy()


def test_saved_folder_loads_in_transformers_with_ispos_probabilities(trained, ft_data):
    out, metrics, _ = trained
    hf, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert type(hf).__name__ == "BertForSequenceClassification"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    config = json.loads((out / "config.json").read_text())
    assert class_names(config) == ["a", "b", "c"] == metrics["classes"]
    assert config["label2id"] == {"a": 0, "b": 1, "c": 2}

    cells = ispo.tokenize(ad.read_h5ad(ft_data), ispo.demo_vocab())
    mdl = ispo.load_model(out, vocab=ispo.demo_vocab(), device="cpu")
    clf = CellClassifier.from_model(mdl, class_names(config), seed=123)  # keeps the saved head
    mine = clf.predict_proba(cells, batch_tokens=64)
    ref = _hf_probabilities(out, cells.to_lists())
    np.testing.assert_allclose(mine, ref, atol=1e-5, rtol=0)
    assert mine.std(0).max() > 1e-4, "probabilities do not depend on the cell"


def test_metrics_split_and_figures(trained, ft_data):
    out, metrics, tracker = trained
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["epochs"] == metrics["epochs"]
    assert [e["epoch"] for e in on_disk["epochs"]] == [1, 2]
    keys = {"epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1"}
    assert all(keys <= set(e) for e in on_disk["epochs"])
    cm = np.array(on_disk["confusion_matrix"])
    split = pd.read_csv(out / "split.csv")
    val = split[split.part == "val"]
    assert cm.shape == (3, 3) and cm.sum() == len(val) == 12
    assert on_disk["settings"]["epochs"] == 2 and on_disk["random_init"] is False
    # every cell once; stratified: 16 per class -> 8 train, 4 val, 4 test each
    labels = ad.read_h5ad(ft_data).obs["state"]
    assert sorted(split.cell) == sorted(labels.index)
    assert (split.label.to_numpy() == labels[split.cell].to_numpy()).all()
    assert split.groupby(["part", "label"]).size().unstack().to_dict("index") == {
        "test": {"a": 4, "b": 4, "c": 4},
        "train": {"a": 8, "b": 8, "c": 8},
        "val": {"a": 4, "b": 4, "c": 4},
    }
    for png in ("confusion_matrix.png", "training_curve.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert not out.with_name(out.name + ".train").exists(), "checkpoint folder left behind"
    assert [step for step, _ in tracker.logged] == [1, 2]
    assert tracker.logged[-1][1]["finetune/val_macro_f1"] == metrics["epochs"][-1]["val_macro_f1"]


def test_same_seed_same_split_other_seed_other_split():
    from ispo.training.data import split_cells

    y = np.repeat([0, 1, 2], 16)
    a = split_cells(y, ["a", "b", "c"], 0.25, 0.25, seed=0)
    b = split_cells(y, ["a", "b", "c"], 0.25, 0.25, seed=0)
    c = split_cells(y, ["a", "b", "c"], 0.25, 0.25, seed=1)
    assert (a.val == b.val).all() and not np.array_equal(a.val, c.val)


def test_freeze_layers_freezes_exactly_the_first_encoder_layers(ft_ckpt, ft_data, tmp_path):
    """Geneformer's freeze_layers=1: bert.encoder.layer.0.* keep their weights, everything
    else (embeddings included) trains."""
    from safetensors.torch import load_file

    out = tmp_path / "frozen"
    s = FAST.replace(epochs=1, freeze_layers=1, lr=1e-2)
    ispo.finetune(
        ft_data, ft_ckpt, out, DataOptions("state", "demo"), s, device="cpu", progress=False
    )
    before = load_file(ft_ckpt / "model.safetensors")
    after = load_file(out / "model.safetensors")
    frozen = {k for k in after if k.startswith("bert.encoder.layer.0.")}
    assert len(frozen) == 16
    for k in frozen:
        assert torch.equal(after[k], before[k]), k
    for k in set(after) - frozen - {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}:
        if k.startswith("classifier."):
            continue
        assert not torch.equal(after[k], before[k]), f"{k} did not train"


def test_dropout_comes_from_the_checkpoint_config(ft_ckpt, tmp_path):
    cfg = json.loads((ft_ckpt / "config.json").read_text())
    mdl = ispo.load_model(ft_ckpt, device="cpu")
    assert mdl.config.hidden_dropout == cfg["hidden_dropout_prob"]
    assert mdl.config.attention_dropout == cfg["attention_probs_dropout_prob"]


def test_dropout_option_sets_both_rates_and_is_saved(ft_ckpt, ft_data, tmp_path):
    from ispo.model.dropout import Dropout

    mdl = ispo.load_model(ft_ckpt, device="cpu")
    clf = CellClassifier.from_model(mdl, ["a", "b"], seed=0, dropout=0.15)
    drops = [m.p for m in clf.encoder.modules() if isinstance(m, Dropout)]
    assert drops and set(drops) == {0.15}
    assert {b.attn.p_attn for b in clf.encoder.blocks} == {0.15}
    assert clf.head.dropout.p == 0.15
    out = tmp_path / "clf"
    s = FAST.replace(epochs=1, dropout=0.15)
    ispo.finetune(ft_data, ft_ckpt, out, DataOptions("state", "demo"), s, device="cpu",
                  progress=False)  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hidden_dropout_prob"] == cfg["attention_probs_dropout_prob"] == 0.15
    assert mdl.config.hidden_dropout != 0.15  # the loaded model is left as it was


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_autocasts_over_fp32_weights(precision, ft_ckpt, ft_data, tmp_path):
    """The autocast path (the GPU default) runs anywhere: fp32 weights saved, finite figures."""
    from safetensors.torch import load_file

    out = tmp_path / precision
    s = FAST.replace(epochs=1, precision=precision)
    m = ispo.finetune(ft_data, ft_ckpt, out, DataOptions("state", "demo"), s, device="cpu",
                      progress=False)  # fmt: skip
    assert m["settings"]["precision"] == precision
    assert np.isfinite([m["epochs"][0]["train_loss"], m["validation"]["loss"]]).all()
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float32}


def test_max_input_cuts_cells_and_the_saved_position_table(ft_ckpt, ft_data, tmp_path):
    """Trained on each cell's top N genes; the folder says N, and a model loaded from it
    tokenizes cells to N (oracle: transformers on each cell's first N tokens, cut by hand)."""
    cells = ispo.tokenize(ad.read_h5ad(ft_data), ispo.demo_vocab())
    n = int(np.median(cells.lengths))
    assert cells.lengths.max() > n, "the test needs cells longer than the cut"
    out = tmp_path / "short"
    s = FAST.replace(epochs=1, max_input=n)
    m = ispo.finetune(ft_data, ft_ckpt, out, DataOptions("state", "demo"), s, device="cpu",
                      progress=False)  # fmt: skip
    assert m["settings"]["max_input"] == n
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == n
    mdl = ispo.load_model(out, vocab=ispo.demo_vocab(), device="cpu")
    assert mdl.max_input() == n
    full = ispo.load_model(ft_ckpt, device="cpu").state_dict
    # the saved table holds only the position rows that cut cells reach
    assert mdl.state_dict["bert.embeddings.position_embeddings.weight"].shape[0] == n
    assert full["bert.embeddings.position_embeddings.weight"].shape[0] > n
    cut = [x[:n] for x in cells.to_lists()]
    clf = CellClassifier.from_model(mdl, m["classes"], seed=1)
    mine = clf.predict_proba(ispo.tokenize(ad.read_h5ad(ft_data), ispo.demo_vocab(), max_input=n))
    np.testing.assert_allclose(mine, _hf_probabilities(out, cut), atol=1e-5, rtol=0)


def test_max_input_beyond_the_models_positions_is_one_line(ft_ckpt, ft_data, tmp_path):
    from ispo.errors import IspoError

    too_long = ispo.load_model(ft_ckpt, device="cpu").config.max_len + 1
    with pytest.raises(IspoError, match=r"exceeds the model's .* positions: give at most"):
        ispo.finetune(ft_data, ft_ckpt, tmp_path / "x", DataOptions("state", "demo"),
                      FAST.replace(max_input=too_long), device="cpu", progress=False)  # fmt: skip
    assert not (tmp_path / "x").exists()
    with pytest.raises(IspoError, match="max_input must be at least 4"):
        TrainSettings(max_input=1)
