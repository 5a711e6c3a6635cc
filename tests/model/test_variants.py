"""Encoder variants built once from RunSettings (attention kernel held by the attention layers,
int8, compile), and ``precision="auto"``."""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend

import ispo
from ispo.errors import IspoError
from ispo.hardware import bf16_matrix_flags, read_cpu_info
from ispo.model.encoder import Attention
from ispo.model.variants import auto_precision, resolve
from ispo.settings import Precision, RunSettings
from support import cpu_has_bf16_units, make_adata


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
    expect = Precision.BF16 if cpu_has_bf16_units() else Precision.FP32
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


# ------------------------------------------- precision "auto": each branch forced, answers written


class TwoGpus:
    """``torch.cuda`` as a machine with a Tesla T4 (compute capability 7.5) at index 0 and an
    A100 (8.0) at index 1 would report it, ``current`` the selected one. ``is_bf16_supported``
    follows torch's own rule for the current device: yes from 8.0, and below it yes unless
    ``including_emulation=False`` (emulated bf16)."""

    GPUS: ClassVar = {0: ("Tesla T4", (7, 5)), 1: ("NVIDIA A100-SXM4-80GB", (8, 0))}

    def __init__(self, monkeypatch: pytest.MonkeyPatch, current: int) -> None:
        self.current = current
        for name, fn in (
            ("current_device", lambda: self.current),
            ("get_device_capability", lambda d=None: self.GPUS[self._index(d)][1]),
            ("get_device_name", lambda d=None: self.GPUS[self._index(d)][0]),
            ("is_bf16_supported", self.is_bf16_supported),
            ("device", self.select),
        ):
            monkeypatch.setattr(torch.cuda, name, fn)

    def _index(self, d) -> int:
        if isinstance(d, int):
            return d
        index = None if d is None else torch.device(d).index
        return self.current if index is None else index

    def is_bf16_supported(self, including_emulation: bool = True) -> bool:
        return self.GPUS[self.current][1][0] >= 8 or including_emulation

    @contextmanager
    def select(self, d):
        before, self.current = self.current, self._index(d)
        try:
            yield
        finally:
            self.current = before


A100_NATIVE = "bf16: NVIDIA A100-SXM4-80GB (compute capability 8.0) has native bf16"
T4_EMULATED = (
    "fp32: Tesla T4 (compute capability 7.5) has no native bf16 (it would be emulated, slower "
    "than fp32); --precision fp16 runs on its tensor cores"
)


@pytest.mark.parametrize(
    ("current", "device", "expected"),
    [
        (0, "cuda:1", (Precision.BF16, A100_NATIVE)),  # asked of the run's GPU, not the current
        (1, "cuda:0", (Precision.FP32, T4_EMULATED)),  # emulated bf16 is not bf16 support
        (1, "cuda", (Precision.BF16, A100_NATIVE)),  # no index: the current GPU is the run's
        (0, "cuda", (Precision.FP32, T4_EMULATED)),
    ],
)
def test_auto_on_cuda_is_bf16_only_with_native_bf16_on_the_runs_gpu(
    monkeypatch, current, device, expected
):
    gpus = TwoGpus(monkeypatch, current)
    assert auto_precision(torch.device(device)) == expected
    assert gpus.current == current  # the selection is given back
    settings, why = resolve(RunSettings(precision="auto"), torch.device(device))
    assert (settings.precision, why) == expected


def _cpu(flags: str):
    return read_cpu_info(f"processor\t: 0\nflags\t\t: fpu sse avx2 fma {flags}\n")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            "avx512f avx512_bf16 amx_tile amx_bf16",  # Intel Sapphire Rapids
            (Precision.BF16, "bf16: the CPU has bf16 matrix units (amx_bf16, avx512_bf16)"),
        ),
        (
            "avx512f avx512_bf16 avx512_vnni",  # AMD Zen 4
            (Precision.BF16, "bf16: the CPU has bf16 matrix units (avx512_bf16)"),
        ),
        (
            "avx512f avx512_vnni",  # AVX-512 without bf16 (Intel Cascade Lake)
            (Precision.FP32, "fp32: the CPU has no bf16 matrix units (no AMX / AVX-512 bf16)"),
        ),
        (
            "",  # AVX2 only (AMD Zen 3, this project's CI machine)
            (Precision.FP32, "fp32: the CPU has no bf16 matrix units (no AMX / AVX-512 bf16)"),
        ),
    ],
)
def test_auto_on_cpu_is_bf16_only_with_bf16_matrix_units(flags, expected):
    assert auto_precision(torch.device("cpu"), _cpu(flags)) == expected


def test_auto_elsewhere_and_with_int8_is_fp32():
    assert auto_precision(torch.device("mps")) == (
        Precision.FP32,
        "fp32: no bf16 rule for device type 'mps'",
    )
    settings, why = resolve(RunSettings(precision="auto", int8=True), torch.device("cpu"))
    assert (settings.precision, why) == (Precision.FP32, "fp32: int8 runs fp32 activations")
