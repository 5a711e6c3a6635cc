"""Fine-tuned checkpoints: each layout is recognised, only a sequence classifier carries a cell
classifier, and the classifier's tail gives transformers' logits after the pooled layer.

Oracle: the checkpoints are saved by transformers (``save_pretrained``; Geneformer's multi-task
module's ``state_dict``), and the logits are ``BertForSequenceClassification.from_pretrained``'s,
one unpadded forward per sequence.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

import ispo
from ispo.errors import IspoError
from ispo.model.finetuned import CheckpointLayout
from ispo.runtime.runner import Runner, Tokens
from ispo.settings import Layout
from support import CLASSES, FINETUNED, save_finetuned_checkpoint

VOCAB = 60


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("finetuned")
    return {k: save_finetuned_checkpoint(root / k, VOCAB, k, max_len=64) for k in FINETUNED}


@pytest.mark.parametrize(
    ("layout", "says"),
    [("sequence", None), ("token", "token classifier"), ("multitask", "multi-task")],
)
def test_only_a_sequence_classifier_carries_a_cell_classifier(ckpts, caplog, layout, says):
    with caplog.at_level(logging.INFO, logger="ispo.model.finetuned"):
        model = ispo.load_model(ckpts[layout], device="cpu")
    if says is None:
        assert model.classifier.classes == CLASSES
        assert model.metadata()["classes"] == list(CLASSES)
    else:
        assert model.classifier is None and "classes" not in model.metadata()
        assert says in caplog.text and "no class-probability columns" in caplog.text
    assert model.without_classifier().classifier is None


def test_plain_checkpoint_is_an_encoder(tiny_model_dir):
    model = ispo.load_model(tiny_model_dir, device="cpu")
    assert model.classifier is None and model.tail(2) is None


def _sequences(n: int = 5) -> list[list[int]]:
    rng = np.random.default_rng(0)
    lengths = [9, 4, 12, 7, 12][:n]  # ragged: padding and its mask matter
    return [rng.choice(np.arange(4, VOCAB), size=k, replace=False).tolist() for k in lengths]


def _tokens(seqs: list[list[int]]) -> Tokens:
    lengths = [len(s) for s in seqs]
    ids = torch.tensor([t for s in seqs for t in s])
    uniform = min(lengths) == max(lengths)
    return Tokens(ids, torch.tensor(lengths), max(lengths), uniform, np.arange(len(seqs)))


class Counting(nn.Module):
    """The encoder, counting its calls (the runner takes any module with its convention)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, ids, ctx):
        self.calls += 1
        return self.net(ids, ctx)


@pytest.mark.parametrize("layout", [Layout.PADDED, Layout.PACKED])
@pytest.mark.parametrize("emb_layer", [-1, 0])
def test_tail_logits_equal_transformers_in_one_encoder_pass(ckpts, layout, emb_layer):
    from transformers import BertForSequenceClassification

    model = ispo.load_model(ckpts["sequence"], device="cpu")
    hf = BertForSequenceClassification.from_pretrained(ckpts["sequence"]).eval()
    seqs = _sequences()
    with torch.no_grad():
        want = torch.cat([hf(input_ids=torch.tensor([s])).logits for s in seqs])
    n_run = model.layers_for(emb_layer)
    enc = Counting(model.encoder(n_run))
    runner = Runner(enc, pad_id=0, layout=layout, tail=model.tail(n_run))
    with torch.inference_mode():
        got = runner.encode(_tokens(seqs))
    assert enc.calls == 1 and len(enc.net.blocks) == n_run  # stops at the pooled layer
    torch.testing.assert_close(got.logits, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.probs(), torch.softmax(want, -1), atol=1e-5, rtol=0)


def test_tail_in_bf16_is_close(ckpts):
    model = ispo.load_model(ckpts["sequence"], device="cpu")
    seqs = _sequences()
    probs = {}
    for precision in ("fp32", "bf16"):
        n_run = model.layers_for(-1)
        runner = Runner(
            model.encoder(n_run, precision),
            pad_id=0,
            layout=Layout.PADDED,
            tail=model.tail(n_run, precision),
        )
        with torch.inference_mode():
            probs[precision] = runner.encode(_tokens(seqs)).probs()
    assert probs["bf16"].dtype == torch.float32
    # 3 layers in bf16 (steps of 2^-8, a few per layer): probabilities move by ~1e-2 at most
    torch.testing.assert_close(probs["bf16"], probs["fp32"], atol=3e-2, rtol=0)


def test_runner_without_a_tail_gives_no_logits(ckpts):
    model = ispo.load_model(ckpts["sequence"], device="cpu").without_classifier()
    n_run = model.layers_for(-1)
    runner = Runner(model.encoder(n_run), pad_id=0, layout=Layout.PADDED, tail=model.tail(n_run))
    with torch.inference_mode():
        enc = runner.encode(_tokens(_sequences()))
    assert enc.logits is None
    with pytest.raises(ValueError, match="without a classifier"):
        enc.probs()


def test_layout_detection_reads_the_architecture(ckpts, tmp_path):
    """A token classifier that kept a pooler is still a token classifier (config.json says so);
    a sequence classifier's config without the pooler's weights is refused."""
    from ispo.model.finetuned import detect_layout

    sd = {"classifier.weight": torch.zeros(3, 8), "bert.pooler.dense.weight": torch.zeros(8, 8)}
    token = {"architectures": ["BertForTokenClassification"]}
    assert detect_layout(token, sd) == CheckpointLayout.TOKEN
    assert detect_layout({}, sd) == CheckpointLayout.SEQUENCE
    assert detect_layout({}, {"classifier.weight": sd["classifier.weight"]}) == "token classifier"
    seq = {"architectures": ["BertForSequenceClassification"]}
    with pytest.raises(IspoError, match=r"no pooler \(bert\.pooler\.dense\.\*\)"):
        detect_layout(seq, {"classifier.weight": sd["classifier.weight"]})


def test_class_names_that_do_not_fit_the_head_are_refused(ckpts, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpts["sequence"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["id2label"] = {"0": "ctrl", "1": "stim"}  # the head has 3 outputs
    cfg["label2id"] = {"ctrl": 0, "stim": 1}
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IspoError, match=r"classifier has 3 outputs: fix id2label"):
        ispo.load_model(bad, device="cpu")
