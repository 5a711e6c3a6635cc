"""The classification head equals transformers' BertForSequenceClassification head."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification

from ispo.model.head import ClassifierHead, class_names


def _hf_classifier() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3, id2label={0: "ctrl", 1: "stim", 2: "other"},
        label2id={"ctrl": 0, "stim": 1, "other": 2},
    )  # fmt: skip
    return BertForSequenceClassification(cfg).eval()


def test_head_logits_equal_transformers():
    hf = _hf_classifier()
    head = ClassifierHead.from_hf_state_dict(hf.state_dict())
    ids = torch.tensor([[5, 9, 12, 7]])
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
        mine = head(out.hidden_states[-1][:, 0])
    torch.testing.assert_close(mine, out.logits, atol=1e-6, rtol=0)


def test_head_round_trips_under_transformers_names():
    hf = _hf_classifier()
    head = ClassifierHead.from_hf_state_dict(hf.state_dict())
    sd = head.hf_state_dict()
    assert set(sd) == {
        "bert.pooler.dense.weight", "bert.pooler.dense.bias",
        "classifier.weight", "classifier.bias",
    }  # fmt: skip
    assert head.n_classes == 3


def test_no_head_in_a_masked_lm_state_dict():
    assert (
        ClassifierHead.from_hf_state_dict({"bert.pooler.dense.weight": torch.zeros(2, 2)}) is None
    )


def test_class_names_in_id_order():
    assert class_names(_hf_classifier().config.to_dict()) == ["ctrl", "stim", "other"]
    assert class_names({"num_labels": 2}) == ["LABEL_0", "LABEL_1"]
