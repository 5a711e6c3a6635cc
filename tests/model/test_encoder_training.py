"""What fine-tuning adds to the fast encoder: dropout that only training sees, the last layer run
for the first token alone, and the weights written back under transformers' names.

Oracle: transformers' ``BertModel`` (a checkpoint saved by it, loaded with ``from_pretrained``).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import BertForMaskedLM

import ispo
from ispo.model.encoder import Encoder
from support import save_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("enc"), 200, n_layers=3, max_len=64)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([9, 17, 4, 17])
    ids = torch.randint(3, 200, (4, 17), generator=gen)
    ids[torch.arange(17)[None] >= lengths[:, None]] = 0
    return ids, lengths


def test_first_token_equals_transformers_last_layer(ckpt):
    mdl = ispo.load_model(ckpt, device="cpu")
    enc = mdl.encoder()
    hf = BertForMaskedLM.from_pretrained(ckpt).eval()
    ids, lengths = _batch()
    mask = (torch.arange(17)[None] < lengths[:, None]).long()
    with torch.no_grad():
        ref = hf.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        mine = enc.first_token(ids, lengths)
        full = enc(ids, lengths)[:, 0]
    torch.testing.assert_close(mine, ref, atol=2e-6, rtol=0)
    torch.testing.assert_close(mine, full, atol=2e-6, rtol=0)


def test_dropout_is_bit_for_bit_absent_in_eval_mode_and_present_in_training(ckpt):
    mdl = ispo.load_model(ckpt, device="cpu")
    loud = replace(mdl.config, hidden_dropout=0.5, attention_dropout=0.5)
    quiet = replace(mdl.config, hidden_dropout=0.0, attention_dropout=0.0)
    a = Encoder.from_hf_state_dict(loud, mdl.state_dict, 3)
    b = Encoder.from_hf_state_dict(quiet, mdl.state_dict, 3)
    ids, lengths = _batch()
    with torch.no_grad():
        assert torch.equal(a(ids, lengths), b(ids, lengths))
        assert torch.equal(a.first_token(ids, lengths), b.first_token(ids, lengths))
        a.train()
        assert not torch.allclose(a(ids, lengths), b(ids, lengths), atol=1e-3)


def test_weights_written_back_under_transformers_names(ckpt):
    mdl = ispo.load_model(ckpt, device="cpu")
    enc = Encoder.from_hf_state_dict(mdl.config, mdl.state_dict, 3)
    types = mdl.state_dict["bert.embeddings.token_type_embeddings.weight"]
    back = enc.hf_state_dict(types)
    hf = BertForMaskedLM.from_pretrained(ckpt).state_dict()
    assert set(back) == {k for k in hf if k.startswith("bert.") and "position_ids" not in k}
    for k, v in back.items():
        assert torch.equal(v, hf[k]), k
