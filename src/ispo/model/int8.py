"""8-bit quantization of a model's linear layers that really computes in 8 bits, or says why not.

Two backends, chosen by device, never a silent fallback to floating point:

- CPU: PyTorch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``): int8 weights,
  activations quantized per batch, int8 x int8 -> int32 matmuls in fbgemm/oneDNN.
- CUDA: :class:`Int8Linear`, W8A8 dynamic quantization on ``torch._int_mm`` (cuBLASLt int8
  GEMM): weights per output channel, activations per token, int32 accumulation, one rescale.

:func:`quantize_int8` raises :class:`Int8Unavailable` with the reason when the backend is
missing, so a benchmark row can say "unavailable" instead of measuring something else.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ispo import faults


class Int8Unavailable(RuntimeError):
    """No int8 backend for this device; the message says why."""


def _pad_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class Int8Linear(nn.Module):
    """A ``nn.Linear`` computed as an int8 x int8 -> int32 matmul (``torch._int_mm``).

    Weights are quantized once, symmetric per output channel; activations on every call,
    symmetric per token (row). ``torch._int_mm`` wants more than 16 rows and inner and outer
    sizes that are multiples of 8, so rows, inputs and outputs are zero-padded as needed (zeros
    add nothing to the products) and the padding is cut off again.
    """

    MIN_ROWS = 17

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        k_pad, n_pad = _pad_to(self.in_features, 8), _pad_to(self.out_features, 8)
        w = F.pad(w, (0, k_pad - self.in_features, 0, n_pad - self.out_features))
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (n_pad,)
        self.register_buffer(
            "w_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        )  # (n_pad, k_pad)
        self.register_buffer("w_scale", scale)
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self.k_pad = k_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        a = x.reshape(-1, shape[-1]).float()  # (M, in)
        m = a.shape[0]
        a = F.pad(a, (0, self.k_pad - self.in_features, 0, max(0, self.MIN_ROWS - m)))
        a_scale = a.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0  # (M', 1)
        a_int8 = torch.round(a / a_scale).clamp(-127, 127).to(torch.int8)
        acc = torch._int_mm(a_int8, self.w_int8.t())  # (M', n_pad) int32
        y = acc[:m, : self.out_features].float() * a_scale[:m] * self.w_scale[: self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.to(dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 W8A8"


def _swap_linears(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child))
        else:
            _swap_linears(child)


def _check_int_mm(device: torch.device) -> None:
    if not hasattr(torch, "_int_mm"):
        raise Int8Unavailable(f"torch {torch.__version__} has no torch._int_mm (int8 GEMM)")
    a = torch.ones(32, 32, dtype=torch.int8, device=device)
    try:
        out = torch._int_mm(a, a.t())
    except Exception as exc:  # old GPU (no int8 tensor cores in cuBLASLt) or old torch
        raise Int8Unavailable(
            f"torch._int_mm fails on {device}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        ) from exc
    if int(out[0, 0]) != 32:
        raise Int8Unavailable(f"torch._int_mm gives wrong results on {device}")


def _quantize_dynamic_cpu(module: nn.Module) -> nn.Module:
    quant = getattr(getattr(torch, "ao", None), "quantization", None)
    if quant is None or not hasattr(quant, "quantize_dynamic"):
        raise Int8Unavailable(
            f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic"
        )
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("x86", "fbgemm", "onednn", "qnnpack")):
        raise Int8Unavailable(f"no quantized CPU engine in this torch build ({engines})")
    with warnings.catch_warnings():
        # Deprecated in favour of torchao, but working in torch 2.13; torchao is not a dependency.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quant.quantize_dynamic(copy.deepcopy(module).float(), {nn.Linear}, dtype=torch.qint8)


def quantize_int8(module: nn.Module, device: torch.device | str) -> tuple[nn.Module, str]:
    """An int8 copy of ``module`` (every ``nn.Linear`` quantized) and a one-line backend name.

    The original module is left untouched. Raises :class:`Int8Unavailable` when the device has
    no int8 backend.
    """
    device = torch.device(device)
    if faults.active("no_int8"):
        raise Int8Unavailable(f"{faults.ENV}: no int8 backend in this build (simulated)")
    if device.type == "cpu":
        q = _quantize_dynamic_cpu(module)
        engine = torch.backends.quantized.engine
        return q, f"torch.ao quantize_dynamic, int8 weights and activations ({engine} engine)"
    if device.type == "cuda":
        _check_int_mm(device)
        q = copy.deepcopy(module)
        _swap_linears(q)
        return q.to(device), "W8A8 dynamic, torch._int_mm (cuBLASLt int8 GEMM)"
    raise Int8Unavailable(f"no int8 backend for device type {device.type!r}")


def count_int8_linears(module: nn.Module) -> int:
    """How many linear layers of ``module`` compute in int8 (either backend)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return sum(isinstance(m, (Int8Linear, DynamicQuantizedLinear)) for m in module.modules())


def count_float_linears(module: nn.Module) -> int:
    """How many plain floating-point ``nn.Linear`` layers remain."""
    return sum(type(m) is nn.Linear for m in module.modules())
