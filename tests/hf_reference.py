"""Independent references: Hugging Face ``transformers`` alone, no ispo code.

The parity tests compare ispo with these. Nothing here imports ``ispo``: the model is
``BertForMaskedLM.from_pretrained`` of the checkpoint directory (so its activation, positions and
LayerNorms are whatever ``transformers`` makes of ``config.json``), batches are padded by hand
with an explicit attention mask, and pooling and perturbation are written out plainly. Inputs
are token id lists (the tokenizer has its own independent reference in ``tests/test_tokens.py``).

Imported as ``from hf_reference import ...`` (a plain module, like ``support``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Half-precision tolerance: every layer rounds its outputs (residual sums, LayerNorm, attention)
# to the half type, a relative step of 2^-8 (bf16) or 2^-10 (fp16), and the roundings compound
# layer by layer. A vector may carry ULPS_PER_LAYER steps per layer run plus 2 (embeddings and
# output) of relative error; measured worst at two layers: 3.2 bf16 steps (a <cls> vector: one
# token, no averaging), so the 6 allowed there leave about 2x.
ULPS_PER_LAYER = 2
SPACING = {"bf16": 2.0**-8, "fp16": 2.0**-10}


def half_error(precision: str, n_run: int) -> float:
    """Allowed relative error of a hidden-state vector after ``n_run`` layers in ``precision``."""
    return ULPS_PER_LAYER * (n_run + 1) * SPACING[precision]


def cosine_atol(ref_cos: np.ndarray, precision: str, n_run: int) -> np.ndarray:
    """Allowed error of each cosine between two half-precision vectors.

    Each vector of the pair may turn by its relative error ``e``; the cosine of an angle t then
    moves by at most about ``2 e sin t + e^2``: almost nothing for near-identical vectors (most
    perturbations), more for far-apart ones. A fixed bound would be either too loose near 1 or
    too tight far from it.
    """
    e = half_error(precision, n_run)
    return 2 * e * np.sqrt(np.clip(1 - np.asarray(ref_cos) ** 2, 0, 1)) + e**2


def load_reference(ckpt: Path):
    """The checkpoint as ``transformers`` loads it: fp32, eval mode."""
    from transformers import BertForMaskedLM

    return BertForMaskedLM.from_pretrained(str(ckpt)).float().eval()


def hidden_at(hf, token_lists: list[list[int]], layer: int, batch: int = 4) -> list[torch.Tensor]:
    """Hidden states ``(len_i, h)`` of each sequence after ``layer`` BERT layers.

    ``layer`` indexes ``hidden_states`` (0 = embeddings). Sequences are padded by hand to the
    longest of their batch, with ``attention_mask`` marking the real tokens.
    """
    out: list[torch.Tensor] = []
    for start in range(0, len(token_lists), batch):
        chunk = token_lists[start : start + batch]
        width = max(len(x) for x in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, x in enumerate(chunk):
            ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        with torch.no_grad():
            hs = hf.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        h = hs.hidden_states[layer].float()
        out += [h[i, : len(x)] for i, x in enumerate(chunk)]
    return out


def layer_of(hf, emb_layer: int) -> int:
    """Geneformer's ``emb_layer``: -1 = the penultimate layer's output, 0 = the last one."""
    return hf.config.num_hidden_layers + emb_layer


def embed_reference(
    hf, token_lists: list[list[int]], emb_layer: int, pool: str, has_cls: bool
) -> torch.Tensor:
    """(n, h) cell embeddings: the <cls> state, or the mean over gene tokens (no <cls>/<eos>)."""
    rows = []
    for x, h in zip(token_lists, hidden_at(hf, token_lists, layer_of(hf, emb_layer))):
        if pool == "cls":
            rows.append(h[0])
        else:
            rows.append(h[1 : len(x) - 1].mean(0) if has_cls else h.mean(0))
    return torch.stack(rows)


def perturbed_row(
    hf, genes: list[int], new: list[int], perturbed: list[int], emb_layer: int, cls_eos=None
) -> dict[str, float]:
    """``cos_sim`` (mean cosine of the genes left in place) and ``cell_cos_sim`` (cosine of the
    mean-pooled cells) of one cell's gene list ``genes`` turned into ``new`` (no truncation).

    ``cls_eos`` is the (<cls>, <eos>) pair of V2 models, which wrap both lists; then
    ``cls_cos_sim`` is the cosine of the two <cls> states as well.
    """
    wrap = (lambda g: [cls_eos[0], *g, cls_eos[1]]) if cls_eos else list
    orig_h, new_h = hidden_at(hf, [wrap(genes), wrap(new)], layer_of(hf, emb_layer))
    extra = {}
    if cls_eos:
        extra["cls_cos_sim"] = float(F.cosine_similarity(orig_h[0], new_h[0], dim=0))
        orig_h, new_h = orig_h[1:-1], new_h[1:-1]
    affected = [g for g in genes if g not in perturbed and g in new]
    cos = F.cosine_similarity(
        orig_h[[genes.index(g) for g in affected]], new_h[[new.index(g) for g in affected]], dim=-1
    )
    cell = F.cosine_similarity(orig_h.mean(0), new_h.mean(0), dim=0)
    return {"cos_sim": float(cos.mean()), "cell_cos_sim": float(cell), **extra}


def load_encoder_reference(ckpt: Path, layout: str):
    """A fine-tuned checkpoint's encoder as ``transformers`` loads it (fp32, eval), with its
    ``.bert`` and ``.config`` as :func:`hidden_at` wants: ``BertForSequenceClassification``,
    ``BertForTokenClassification``, or ``BertModel`` for Geneformer's multi-task layout (its
    ``bert.*`` keys load as the base model's)."""
    from types import SimpleNamespace

    from transformers import BertForSequenceClassification, BertForTokenClassification, BertModel

    if layout == "multitask":
        bert = BertModel.from_pretrained(str(ckpt)).float().eval()
        return SimpleNamespace(bert=bert, config=bert.config)
    cls = {"sequence": BertForSequenceClassification, "token": BertForTokenClassification}[layout]
    return cls.from_pretrained(str(ckpt)).float().eval()


def class_probs(ckpt: Path, token_lists: list[list[int]]) -> torch.Tensor:
    """(n, classes) softmax of ``BertForSequenceClassification.from_pretrained`` logits, one
    forward per sequence (no padding at all)."""
    from transformers import BertForSequenceClassification

    hf = BertForSequenceClassification.from_pretrained(str(ckpt)).float().eval()
    with torch.no_grad():
        logits = [hf(input_ids=torch.tensor([x])).logits[0] for x in token_lists]
    return torch.softmax(torch.stack(logits), dim=-1)
