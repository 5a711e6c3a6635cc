"""Published Geneformer architectures as data: one row per model, under every name it goes by.

Names follow Geneformer's Hugging Face folders and Helical's aliases (the facts doc's table).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ispo.errors import IspoError

# Feed-forward activations the fast encoder runs, under Hugging Face's ``hidden_act`` names
# ("gelu" is the exact erf GELU, as in ``transformers``; "gelu_new" and friends are refused).
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu")


@dataclass(frozen=True)
class GeneformerConfig:
    """A BERT encoder as Geneformer uses it (post-LayerNorm, absolute positions).

    ``hidden_act`` is the feed-forward activation: every published Geneformer uses ReLU, but a
    fine-tuned or re-trained checkpoint may say GELU, and running it with the wrong one gives
    wrong numbers silently, so it is read from ``config.json`` and carried with the shape.
    The dropout rates are Geneformer's pretraining ones (0.02) unless ``config.json`` says
    otherwise; only training uses them.
    """

    n_layers: int
    hidden: int
    heads: int
    intermediate: int
    max_len: int
    vocab_size: int
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    pad_id: int = 0
    hidden_act: str = "relu"
    # dropout while training (``ispo finetune``); inference never applies it
    hidden_dropout: float = 0.02
    attention_dropout: float = 0.02

    def to_hf(self):
        """The equivalent ``transformers.BertConfig`` (for the reference model)."""
        from transformers import BertConfig

        return BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.heads,
            intermediate_size=self.intermediate,
            hidden_act=self.hidden_act,
            max_position_embeddings=self.max_len,
            layer_norm_eps=self.layer_norm_eps,
            type_vocab_size=self.type_vocab_size,
            pad_token_id=self.pad_id,
            hidden_dropout_prob=self.hidden_dropout,
            attention_probs_dropout_prob=self.attention_dropout,
        )

    @classmethod
    def from_hf(cls, cfg: dict) -> GeneformerConfig:
        """From a Hugging Face ``config.json`` dict; refuses what is not a Geneformer BERT."""
        if cfg.get("model_type", "bert") != "bert":
            raise IspoError(
                f"checkpoint model_type is {cfg.get('model_type')!r}, not 'bert': "
                "ispo runs Geneformer (BERT) checkpoints"
            )
        act = cfg.get("hidden_act", "relu")
        if act not in ACTIVATIONS:
            raise IspoError(
                f"config.json has hidden_act {act!r}, which ispo does not run: use a checkpoint "
                f"whose hidden_act is one of {', '.join(map(repr, ACTIVATIONS))} "
                "(Geneformer's is 'relu')"
            )
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise IspoError("only absolute position embeddings are supported (Geneformer's)")
        try:
            return cls(
                n_layers=cfg["num_hidden_layers"],
                hidden=cfg["hidden_size"],
                heads=cfg["num_attention_heads"],
                intermediate=cfg["intermediate_size"],
                max_len=cfg["max_position_embeddings"],
                vocab_size=cfg["vocab_size"],
                layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
                type_vocab_size=cfg.get("type_vocab_size", 2),
                pad_id=cfg.get("pad_token_id", 0),
                hidden_act=act,
                hidden_dropout=cfg.get("hidden_dropout_prob", 0.02),
                attention_dropout=cfg.get("attention_probs_dropout_prob", 0.02),
            )
        except KeyError as exc:
            raise IspoError(f"config.json lacks {exc.args[0]!r}: not a BERT config") from exc

    def to_dict(self) -> dict:
        return asdict(self)


_V1, _V2 = 25_426, 20_275
_ROWS: list[tuple[tuple[str, ...], GeneformerConfig]] = [
    (
        ("gf-6L-30M-i2048", "Geneformer-V1-10M", "gf-6L-10M-i2048"),
        GeneformerConfig(6, 256, 4, 512, 2048, _V1),
    ),
    (("gf-12L-30M-i2048", "gf-12L-40M-i2048"), GeneformerConfig(12, 512, 8, 1024, 2048, _V1)),
    (
        ("gf-12L-95M-i4096", "gf-12L-38M-i4096", "gf-12L-95M-i4096_CLcancer"),
        GeneformerConfig(12, 512, 8, 1024, 4096, _V2),
    ),
    (("gf-20L-95M-i4096", "gf-20L-151M-i4096"), GeneformerConfig(20, 896, 14, 1792, 4096, _V2)),
    (
        ("Geneformer-V2-104M", "gf-12L-104M-i4096", "Geneformer-V2-104M_CLcancer"),
        GeneformerConfig(12, 768, 12, 3072, 4096, _V2, hidden_dropout=0.1, attention_dropout=0.1),
    ),
    (
        ("Geneformer-V2-316M", "gf-18L-316M-i4096"),
        GeneformerConfig(18, 1152, 18, 4608, 4096, _V2, hidden_dropout=0.1, attention_dropout=0.1),
    ),
]
PRESETS: dict[str, GeneformerConfig] = {name: cfg for names, cfg in _ROWS for name in names}


def preset(name: str) -> GeneformerConfig:
    """The architecture of a named Geneformer model (case-insensitive)."""
    for key, cfg in PRESETS.items():
        if key.lower() == name.lower():
            return cfg
    raise IspoError(
        f"unknown model {name!r}: give a checkpoint directory or one of {', '.join(PRESETS)}"
    )
