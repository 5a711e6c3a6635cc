"""Encoder variants built once from RunSettings (attention kernel held by the attention layers,
int8, compile), and ``precision="auto"``."""

from __future__ import annotations

import numpy as np
import pytest
from torch.nn.attention import SDPBackend

import ispo
from ispo.errors import IspoError
from ispo.hardware import bf16_matrix_flags, read_cpu_info
from ispo.model.encoder import Attention
from ispo.settings import Precision, RunSettings
from support import make_adata


@pytest.fixture(scope="module")
def model(ckpt_v1, vocab_v1):
    return ispo.load_model(str(ckpt_v1), vocab=vocab_v1, device="cpu")


@pytest.fixture(scope="module")
def cells(model, vocab_v1):
    return ispo.tokenize(make_adata(6), vocab_v1)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_variants_are_built_at_load_and_leave_other_models_alone(ckpt_v1, vocab_v1, model, cells):
    plain = ispo.embed_cells(cells, model)
    settings = RunSettings(batch_tokens=4096, attention="math", int8=True)
    q8 = ispo.load_model(str(ckpt_v1), vocab=vocab_v1, device="cpu", settings=settings)
    net = q8.encoder(q8.layers_for(-1))
    assert "DynamicQuantizedLinear" in repr(net)
    assert q8.encoder(q8.layers_for(-1)) is net  # built once
    got = ispo.embed_cells(cells, q8, batch_tokens=4096)
    assert cosine(got, plain).min() > 0.99
    assert "DynamicQuantizedLinear" not in repr(model.encoder(model.layers_for(-1)))


def test_the_attention_kernel_is_held_by_the_module(model, cells):
    math = model.with_settings(RunSettings(attention="math"))
    enc = math.encoder(math.layers_for(-1))
    layers = [m for m in enc.modules() if isinstance(m, Attention)]
    assert layers and all(m.sdpa_backends == [SDPBackend.MATH] for m in layers)
    plain = [m for m in model.encoder(model.layers_for(-1)).modules() if isinstance(m, Attention)]
    assert all(m.sdpa_backends is None for m in plain)
    np.testing.assert_allclose(
        ispo.embed_cells(cells, math), ispo.embed_cells(cells, model), atol=1e-5
    )


def test_perturb_records_the_variant(model, vocab_v1):
    adata = make_adata(4)
    df = ispo.perturb(adata, model, settings=RunSettings(attention="math"), max_ncells=2)
    params = df.attrs["metadata"]["params"]
    assert params["fast_settings"] == {"attention": "math", "compile": False, "int8": False}
    assert (
        ispo.perturb(adata, model, max_ncells=2).attrs["metadata"]["params"]["fast_settings"]
        is None
    )


def test_int8_with_half_precision_is_refused():
    with pytest.raises(IspoError, match="int8 runs with fp32"):
        RunSettings(precision="bf16", int8=True)


def test_cpu_bf16_flags_are_read_from_cpuinfo():
    amx = read_cpu_info("flags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert bf16_matrix_flags(amx) == ["amx_bf16", "avx512_bf16"]
    assert bf16_matrix_flags(read_cpu_info("processor\t: 0\nflags\t\t: fpu sse avx2\n")) == []
    assert bf16_matrix_flags(read_cpu_info("")) == []


def test_precision_auto_is_resolved_once_and_recorded(ckpt_v1, vocab_v1, cells):
    auto = ispo.load_model(
        str(ckpt_v1), vocab=vocab_v1, device="cpu", settings=RunSettings(precision="auto")
    )
    expect = Precision.BF16 if bf16_matrix_flags() else Precision.FP32
    assert auto.settings.precision == expect
    assert auto.precision_note.startswith(str(expect))
    assert auto.metadata()["precision_auto"] == auto.precision_note
    adata = make_adata(4)
    ispo.embed(adata, auto)
    assert adata.uns["geneformer"]["precision"] == str(expect)
    assert adata.uns["geneformer"]["precision_auto"] == auto.precision_note
    # int8 runs fp32 activations, so auto is fp32 there
    q8 = auto.with_settings(RunSettings(precision="auto", int8=True))
    assert q8.settings.precision == Precision.FP32
