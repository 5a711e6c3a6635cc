"""``PRESETS`` against the published ``config.json`` of every Geneformer model.

Oracle: ``../shared/data/geneformer-configs/<model>/config.json`` (the Hugging Face files as
released), read with plain ``json``; skipped where the shared data is absent.
"""

from __future__ import annotations

import json

import pytest

from ispo.errors import IspoError
from ispo.model.presets import PRESETS, GeneformerConfig, preset
from support import shared_path

# BertConfig keys -> GeneformerConfig fields
KEYS = {
    "num_hidden_layers": "n_layers",
    "hidden_size": "hidden",
    "num_attention_heads": "heads",
    "intermediate_size": "intermediate",
    "max_position_embeddings": "max_len",
    "vocab_size": "vocab_size",
    "layer_norm_eps": "layer_norm_eps",
    "type_vocab_size": "type_vocab_size",
    "pad_token_id": "pad_id",
    "hidden_act": "hidden_act",
    "hidden_dropout_prob": "hidden_dropout",
    "attention_probs_dropout_prob": "attention_dropout",
}


def published() -> dict[str, dict]:
    root = shared_path("geneformer-configs")
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/config.json"))}


def test_every_published_model_is_a_preset_with_its_architecture():
    configs = published()
    assert len(configs) >= 9
    for name, cfg in configs.items():
        got = preset(name)  # case-insensitive lookup of the folder name
        for key, field in KEYS.items():
            assert getattr(got, field) == cfg[key], f"{name}: {field}"
        assert GeneformerConfig.from_hf(cfg) == got, name


def test_presets_run_the_published_activation():
    """Every published Geneformer is ReLU; a preset carries it into the reference model too."""
    for name, cfg in published().items():
        assert PRESETS[name].hidden_act == cfg["hidden_act"] == "relu", name
        assert PRESETS[name].to_hf().hidden_act == "relu", name


def test_gelu_config_is_carried_to_the_reference_model():
    cfg = {
        "num_hidden_layers": 2,
        "hidden_size": 8,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "max_position_embeddings": 32,
        "vocab_size": 10,
        "hidden_act": "gelu",
    }
    assert GeneformerConfig.from_hf(cfg).to_hf().hidden_act == "gelu"
    with pytest.raises(IspoError, match=r"hidden_act 'silu', which ispo does not run: use"):
        GeneformerConfig.from_hf({**cfg, "hidden_act": "silu"})


def test_unknown_preset_names_the_choices():
    with pytest.raises(IspoError, match=r"unknown model 'gf-99L': give a checkpoint directory or"):
        preset("gf-99L")
