"""Encoder variants, built once when the encoder is built (gpt-fast's way): the SDPA kernel held
by each attention layer, int8 linear layers, ``torch.compile`` and the precision.

:func:`build_encoder` turns a :class:`~ispo.settings.RunSettings` into the module that runs; the
loader (:meth:`ispo.model.load.GeneformerModel.encoder`) caches what it builds, ``ispo tune`` and
the benchmark build one per trial or row. Nothing is swapped on a model afterwards: a run that
wants another variant asks for another encoder.

``precision="auto"`` is resolved here, once (:func:`resolve`): bf16 where the hardware computes
bf16 natively (GPUs of compute capability 8.0 and later; CPUs with AMX or AVX-512 bf16), fp32
elsewhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ispo.errors import IspoError
from ispo.hardware import CpuInfo, bf16_matrix_flags
from ispo.model.encoder import Attention, Block, Encoder, fused_bf16_linear_available
from ispo.model.presets import GeneformerConfig
from ispo.settings import Attention as Kernel
from ispo.settings import Precision, RunSettings

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
#: Attention kernel -> ``torch.nn.attention.SDPBackend`` member (``default``: PyTorch chooses).
SDPA_BACKENDS = {
    Kernel.DEFAULT: None,
    Kernel.MATH: "MATH",
    Kernel.FLASH: "FLASH_ATTENTION",
    Kernel.EFFICIENT: "EFFICIENT_ATTENTION",
    Kernel.CUDNN: "CUDNN_ATTENTION",
}


# --- precision "auto" -------------------------------------------------------------------------


def cuda_native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether the run's GPU computes bf16 natively, and its name with its compute capability.

    Native means compute capability >= 8.0 (Ampere and later) and
    ``torch.cuda.is_bf16_supported(including_emulation=False)``, asked of ``device`` itself,
    not of the current device (which need not be the run's). A V100 or T4 (7.x) only emulates
    bf16, slower than fp32: torch's default ``including_emulation=True`` says yes there.
    """
    index = torch.cuda.current_device() if device.index is None else device.index
    major, minor = torch.cuda.get_device_capability(index)
    with torch.cuda.device(index):
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    name = f"{torch.cuda.get_device_name(index)} (compute capability {major}.{minor})"
    return native and major >= 8, name


def auto_precision(device: torch.device, cpu: CpuInfo | None = None) -> tuple[Precision, str]:
    """What ``precision="auto"`` means on ``device``, and why (one line for logs and metadata).

    CUDA: bf16 where the GPU has native bf16 (:func:`cuda_native_bf16`). CPU (``cpu``: this
    machine's by default): bf16 where bf16 matrix products run in hardware (AMX or AVX-512
    bf16, :func:`ispo.hardware.bf16_matrix_flags`); without them torch converts around every
    product and bf16 is slower than fp32. fp32 everywhere else.
    """
    if device.type == "cuda":
        native, gpu = cuda_native_bf16(device)
        if native:
            return Precision.BF16, f"bf16: {gpu} has native bf16"
        return Precision.FP32, (
            f"fp32: {gpu} has no native bf16 (it would be emulated, slower than fp32); "
            "--precision fp16 runs on its tensor cores"
        )
    if device.type == "cpu":
        flags = bf16_matrix_flags(cpu)
        if flags:
            return Precision.BF16, f"bf16: the CPU has bf16 matrix units ({', '.join(flags)})"
        return Precision.FP32, "fp32: the CPU has no bf16 matrix units (no AMX / AVX-512 bf16)"
    return Precision.FP32, f"fp32: no bf16 rule for device type {device.type!r}"


def resolve(settings: RunSettings, device: torch.device) -> tuple[RunSettings, str | None]:
    """``settings`` with ``precision="auto"`` made concrete for ``device``, and the reason when
    it was ``auto`` (None otherwise). int8 runs fp32 around its int8 matmuls, so auto is fp32."""
    if settings.precision != Precision.AUTO:
        return settings, None
    if settings.int8:
        return settings.replace(precision=Precision.FP32), "fp32: int8 runs fp32 activations"
    chosen, why = auto_precision(device)
    return settings.replace(precision=chosen), why


# --- the attention kernel, int8, compile ------------------------------------------------------


def sdpa_backends(kernel: Kernel | str) -> list | None:
    """The ``SDPBackend`` list an attention layer holds for ``kernel`` (None: no restriction)."""
    member = SDPA_BACKENDS[Kernel.parse(kernel, "attention")]
    if member is None:
        return None
    from torch.nn.attention import SDPBackend

    backend = getattr(SDPBackend, member, None)
    if backend is None:
        raise IspoError(f"attention kernel {kernel!s} is not in torch {torch.__version__}")
    return [backend]


def set_attention(module: nn.Module, kernel: Kernel | str) -> None:
    """Fix the SDPA kernel of every attention layer of ``module`` (built into the module)."""
    backends = sdpa_backends(kernel)
    for m in module.modules():
        if isinstance(m, Attention):
            m.sdpa_backends = backends


def fused_linear_pays(device: torch.device, precision: Precision | str) -> bool:
    """Whether an encoder built for ``device`` in ``precision`` runs its linear layers as fused
    oneDNN calls: bf16 on a CPU where oneDNN has bf16 (:func:`fused_bf16_linear_available`)."""
    return (
        device.type == "cpu"
        and Precision.parse(precision, "precision") == Precision.BF16
        and fused_bf16_linear_available()
    )


def set_fused_linear(module: nn.Module, on: bool) -> None:
    """Fix whether every attention layer and block of ``module`` runs its linear layers as
    fused oneDNN bf16 calls (built into the module, as the attention kernel is)."""
    for m in module.modules():
        if isinstance(m, Attention | Block):
            m.fuse_linear = on


def attention_works(kernel: Kernel | str, device: torch.device | str, precision: str) -> bool:
    """Whether SDPA runs with ``kernel`` on ``device`` with a padding mask (as the encoder calls
    it) in ``precision``."""
    device = torch.device(device)
    backends = sdpa_backends(kernel)
    if backends is None:
        return True
    from torch.nn.attention import sdpa_kernel

    q = torch.randn(2, 2, 24, 16, device=device, dtype=DTYPES[precision])
    mask = torch.ones(2, 1, 1, 24, dtype=torch.bool, device=device)
    mask[0, ..., 20:] = False
    try:
        with sdpa_kernel(backends):
            F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
            F.scaled_dot_product_attention(q, q, q)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def int8_available(device: torch.device | str) -> bool:
    """Whether :func:`ispo.model.int8.quantize_int8` has a backend on ``device``."""
    from ispo.model.int8 import Int8Unavailable, quantize_int8

    device = torch.device(device)
    try:
        q, _ = quantize_int8(nn.Sequential(nn.Linear(16, 16)).to(device), device)
        with torch.inference_mode():
            q(torch.randn(32, 16, device=device))
    except (Int8Unavailable, RuntimeError, NotImplementedError):
        return False
    return True


def compile_available() -> bool:
    """Whether this torch has ``torch.compile`` (a working compiler is only known on first use)."""
    return hasattr(torch, "compile")


@dataclass
class Built:
    """A built encoder: the module to call, a one-line description, its int8 layer count."""

    net: nn.Module
    description: str
    int8_linear_layers: int | None = None


def apply_int8(module: nn.Module, device: torch.device) -> tuple[nn.Module, str, int]:
    """An int8 copy of ``module`` (every ``nn.Linear``), its backend and its int8 layer count;
    IspoError when the device has no int8 backend or nothing was quantized."""
    from ispo.model.int8 import Int8Unavailable, count_int8_linears, quantize_int8

    try:
        net, backend = quantize_int8(module, device)
    except Int8Unavailable as exc:
        raise IspoError(f"int8 is not available on {device}: {exc}; turn int8 off") from exc
    n = count_int8_linears(net)
    if n == 0:
        raise IspoError("int8 quantization left no int8 linear layer: turn int8 off")
    return net, backend, n


def apply_compile(module: nn.Module) -> nn.Module:
    """``torch.compile(module, dynamic=True)`` (inductor; compiles per shape on first use)."""
    if not compile_available():
        raise IspoError(f"torch {torch.__version__} has no torch.compile: turn compile off")
    return torch.compile(module, dynamic=True)


def build_encoder(
    cfg: GeneformerConfig,
    state_dict: dict[str, torch.Tensor],
    n_run: int,
    settings: RunSettings,
    device: torch.device,
) -> Built:
    """The encoder ``settings`` runs: ``n_run`` layers in its precision, its attention kernel
    and (bf16 on a CPU with oneDNN bf16) fused linear layers held by every layer, int8 and
    compile applied in that order.

    ``settings.precision`` must be resolved (not ``auto``: see :func:`resolve`).
    """
    if settings.precision == Precision.AUTO:
        raise ValueError("resolve precision 'auto' before building an encoder")
    enc = Encoder.from_hf_state_dict(cfg, state_dict, n_run)
    enc = enc.to(device=device, dtype=DTYPES[str(settings.precision)])
    set_attention(enc, settings.attention)
    fused = fused_linear_pays(device, settings.precision)
    set_fused_linear(enc, fused)
    desc = (
        f"ispo Encoder (layers 1-{n_run} of {cfg.n_layers}, {settings.precision}, "
        f"SDPA {settings.attention}, no MLM head"
        + (", fused oneDNN bf16 linear layers)" if fused else ")")
    )
    net: nn.Module = enc
    n_int8 = None
    if settings.int8:
        net, backend, n_int8 = apply_int8(enc, device)
        desc += f"; {backend}; {n_int8} int8 linear layers"
    if settings.compile:
        net = apply_compile(net)
        desc += "; torch.compile(dynamic=True, inductor)"
    return Built(net, desc, n_int8)
