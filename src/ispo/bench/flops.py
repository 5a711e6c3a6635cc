"""Model FLOPs and model FLOPs utilisation (MFU).

MFU, the share of the hardware's peak arithmetic rate that a run turns into model FLOPs, shows how
far a method is from the hardware limit: a fast method at 5 % MFU still has room, one at 60 % does
not. FLOPs are counted from each cell's actual token count, not the padded batch length, so padding,
recomputation and other wasted work lower MFU instead of inflating it, and methods that pad
differently are compared on the same useful work.

Counts are for the forward pass, a multiply-add counting as 2 FLOPs. Embedding look-ups, layer
norms, softmax and activations are left out; they are a few percent at most.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from ispo.peak import DTYPE_KEYS, Peak, PeakMode, cpu_peak

# Dense (no sparsity) peak FLOP/s from NVIDIA's datasheets. A row applies when all its name tokens
# appear in torch.cuda.get_device_name(); rows are tried in order, most specific first, so
# "H100 PCIe" is not read as an SXM part and "L40S" never matches "L4". A missing dtype, or an
# empty row (a part whose figures are not tabulated), gives None.
_HOPPER_SXM = {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12, "fp32": 67e12, "int8": 1979e12}
_PEAKS: list[tuple[tuple[str, ...], dict[str, float]]] = [
    # H100 NVL: per-GPU figures differ between datasheet revisions.
    (("H100", "NVL"), {}),
    (
        ("H100", "PCIE"),
        {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12, "int8": 1513e12},
    ),
    # Reports as "NVIDIA H100 80GB HBM3".
    (("H100",), _HOPPER_SXM),
    (
        ("H200", "NVL"),
        {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12, "int8": 1670.5e12},
    ),
    (("H200",), _HOPPER_SXM),
    (("GH200",), _HOPPER_SXM),
    (("A100",), {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12, "int8": 624e12}),
    (("L4",), {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12, "int8": 242.5e12}),
    # Volta and Turing have no bf16 or tf32 tensor cores.
    (("V100", "SXM2"), {"fp16": 125e12, "fp32": 15.7e12}),
    (("V100", "PCIE"), {"fp16": 112e12, "fp32": 14e12}),
    (("T4",), {"fp16": 65e12, "fp32": 8.1e12, "int8": 130e12}),
]


def _lengths(lengths: np.ndarray | Sequence[int]) -> np.ndarray:
    # float64: n^2 * h summed over millions of cells must neither overflow nor round badly.
    n = np.asarray(lengths, dtype=np.float64)
    if n.ndim != 1 or (n < 0).any():
        raise ValueError("lengths must be a 1-D sequence of non-negative token counts")
    return n


def encoder_flops(
    lengths: np.ndarray | Sequence[int], *, n_layers: int, hidden: int, intermediate: int
) -> float:
    """Forward FLOPs of a BERT encoder over sequences of the given (unpadded) lengths.

    Per sequence of ``n`` tokens: ``n_layers * (2n(4h^2 + 2h*i) + 4n^2 h)``, i.e. the Q, K, V and
    output projections (``4h^2``) and the feed-forward pair (``2h*i``) for every token, plus the
    ``QK^T`` and attention-times-``V`` products, quadratic in ``n``.

    Parameters
    ----------
    lengths
        Token count of each sequence (cell), special tokens included, padding excluded.
    n_layers, hidden, intermediate
        Encoder depth, hidden size ``h`` and feed-forward size ``i``.

    Examples
    --------
    >>> round(encoder_flops([1000], n_layers=6, hidden=256, intermediate=512) / 1e9, 1)
    12.4
    """
    n = _lengths(lengths)
    h, i = float(hidden), float(intermediate)
    per_layer = 2.0 * n * (4.0 * h * h + 2.0 * h * i) + 4.0 * n * n * h
    return float(n_layers * per_layer.sum())


def mlm_head_flops(lengths: np.ndarray | Sequence[int], *, hidden: int, vocab_size: int) -> float:
    """Forward FLOPs of the masked-LM head (dense transform, then projection to the vocabulary).

    Per sequence: ``2n(h^2 + h*vocab_size)``. It matters when perturbation scores need token
    logits: with Geneformer's ~25k-gene vocabulary it roughly doubles a 6-layer model's cost.
    """
    n = _lengths(lengths)
    h = float(hidden)
    return float((2.0 * n * (h * h + h * float(vocab_size))).sum())


def device_peak(
    device: str | torch.device, dtype: torch.dtype, mode: PeakMode | str = PeakMode.AUTO
) -> Peak:
    """Dense peak FLOP/s of ``device`` for ``dtype`` and where it comes from (:class:`Peak`;
    ``flops`` None where it is not known).

    MFU is reported only where a peak is known: a guessed peak would make a guessed MFU. On CPU
    see :func:`ispo.peak.cpu_peak` (``ISPO_CPU_PEAK_FLOPS``, else this machine's measured peak
    unless ``mode`` is ``nominal``, else the formula). On CUDA the peak comes from a datasheet
    table matched on :func:`torch.cuda.get_device_name`; float32 uses the TF32 tensor-core peak
    when ``torch.backends.cuda.matmul.allow_tf32`` is on.
    """
    device = torch.device(device)
    key = DTYPE_KEYS.get(dtype, str(dtype))
    if device.type == "cpu":
        return cpu_peak(dtype, mode)
    if device.type != "cuda":
        return Peak(key, None, "unknown", f"no peak known for device type {device.type!r}")
    name = torch.cuda.get_device_name(device)
    tokens = set(re.split(r"[^A-Z0-9]+", name.upper()))
    for required, peaks in _PEAKS:
        if tokens.issuperset(required):
            if key == "fp32" and torch.backends.cuda.matmul.allow_tf32 and "tf32" in peaks:
                return Peak(key, peaks["tf32"], "datasheet", f"{name}, dense TF32 (allow_tf32)")
            if key not in peaks:
                return Peak(key, None, "datasheet", f"{name}: no {key} figure tabulated")
            return Peak(key, peaks[key], "datasheet", f"{name}, dense {key}")
    return Peak(key, None, "datasheet", f"{name} is not in ispo's datasheet table")


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over ``peak``, as a fraction (0.4 = 40 %).

    None when the peak is unknown (see :func:`device_peak`).
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if peak is None:
        return None
    return flops / seconds / peak
