"""The fused oneDNN bf16 linear layers of the CPU encoder against the unfused bf16 path.

Both paths are built at load (the variant held by every layer, :func:`set_fused_linear`), so the
test builds one encoder and switches its copy to the other path through that public setting.
Oracle: the fp32 encoder (itself checked against transformers in tests/embedding/test_parity.py),
at bf16's tolerance (tests/hf_reference.py: a few steps of bf16's 8-bit mantissa per layer).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import ispo
from hf_reference import half_error
from ispo.model.encoder import Attention, Block, Packed, fused_bf16_linear_available
from ispo.model.variants import set_fused_linear
from ispo.settings import RunSettings
from support import make_adata

needs_onednn_bf16 = pytest.mark.skipif(
    not fused_bf16_linear_available(),
    reason="this CPU has no oneDNN bf16 (AVX512-BF16 or AMX), so the fused bf16 linear path "
    "cannot run here; the test runs on CPUs that have it",
)
FUSED_OP = "_linear_pointwise"  # torch.ops.mkldnn._linear_pointwise(.binary)


@pytest.fixture(scope="module")
def bf16_model(ckpt_v1, vocab_v1):
    return ispo.load_model(
        str(ckpt_v1), vocab=vocab_v1, device="cpu", settings=RunSettings(precision="bf16")
    )


@pytest.fixture(scope="module")
def batch(vocab_v1):
    """Six cells of different lengths, padded (ids, lengths) and packed (ids, Packed)."""
    cells = ispo.tokenize(make_adata(6), vocab_v1)
    seqs = [torch.from_numpy(cells.cell(i).astype(np.int64)) for i in range(len(cells))]
    lengths = torch.tensor([len(s) for s in seqs])
    padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=0)
    return (padded, lengths), (torch.cat(seqs), Packed.from_lengths(lengths))


def _layers(enc: torch.nn.Module) -> list:
    return [m for m in enc.modules() if isinstance(m, Attention | Block)]


def _run(enc: torch.nn.Module, ids: torch.Tensor, ctx) -> tuple[torch.Tensor, set[str]]:
    """The encoder's output in fp32 and the names of the operators it ran."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        out = enc(ids, ctx)
    return out.float(), {e.name for e in prof.events()}


def test_fp32_encoders_never_fuse(bf16_model):
    enc = bf16_model.built_encoder(None, "fp32")
    assert not any(m.fuse_linear for m in _layers(enc.net))
    assert "fused" not in enc.description


@needs_onednn_bf16
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_fused_bf16_linear_layers_match_the_unfused_path(bf16_model, batch, layout):
    n_run = bf16_model.layers_for(-1)
    built = bf16_model.built_encoder(n_run)
    assert "fused oneDNN bf16 linear layers" in built.description
    fused = built.net
    assert all(m.fuse_linear for m in _layers(fused))  # the default on this CPU, built at load
    unfused = copy.deepcopy(fused)
    set_fused_linear(unfused, False)
    ids, ctx = batch[layout == "packed"]
    got, ops = _run(fused, ids, ctx)
    plain, plain_ops = _run(unfused, ids, ctx)
    ref, _ = _run(bf16_model.encoder(n_run, "fp32"), ids, ctx)
    assert any(FUSED_OP in op for op in ops)  # the fused path really ran...
    assert not any(FUSED_OP in op for op in plain_ops)  # ...and the other did not
    if layout == "padded":  # padding positions are not compared
        keep = torch.arange(ids.shape[1])[None] < ctx[:, None]
        got, plain, ref = got[keep], plain[keep], ref[keep]
    atol = half_error("bf16", n_run) * float(ref.abs().max())
    assert float((got - ref).abs().max()) <= atol
    assert float((plain - ref).abs().max()) <= atol
    assert float((got - plain).abs().max()) <= atol
