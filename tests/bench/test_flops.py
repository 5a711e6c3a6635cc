"""FLOP counts against the reference table, MFU arithmetic and the peak table lookup."""

import numpy as np
import pytest
import torch

from ispo.bench.flops import encoder_flops, mfu, mlm_head_flops, peak_flops
from ispo.errors import IspoError
from ispo.hardware import cpu_peak_flops

SMALL = {"n_layers": 6, "hidden": 256, "intermediate": 512}
LARGE = {"n_layers": 12, "hidden": 512, "intermediate": 1024}


@pytest.mark.parametrize(
    ("config", "n", "gflop"),
    [
        (SMALL, 500, 4.7),
        (SMALL, 1000, 12.4),
        (SMALL, 2048, 38.7),
        (LARGE, 500, 31.3),
        (LARGE, 1000, 74.9),
        (LARGE, 2048, 206.0),
    ],
)
def test_encoder_flops_table(config: dict[str, int], n: int, gflop: float) -> None:
    assert encoder_flops([n], **config) / 1e9 == pytest.approx(gflop, rel=0.02)


def test_encoder_flops_sums_unpadded_cells() -> None:
    lengths = np.array([500, 1000, 2048])
    total = encoder_flops(lengths, **SMALL)
    assert total == pytest.approx(sum(encoder_flops([n], **SMALL) for n in lengths))
    assert encoder_flops([], **SMALL) == 0.0
    with pytest.raises(ValueError, match="lengths must be a 1-D sequence of non-negative"):
        encoder_flops([-1], **SMALL)


def test_mlm_head_flops() -> None:
    assert mlm_head_flops([1000], hidden=256, vocab_size=25426) / 1e9 == pytest.approx(13, rel=0.02)


def test_mfu() -> None:
    assert mfu(1e12, 2.0, 1e12) == pytest.approx(0.5)
    assert mfu(1e12, 2.0, None) is None
    with pytest.raises(ValueError, match=r"seconds must be positive, got 0\.0"):
        mfu(1e12, 0.0, 1e12)


def test_cpu_peak_estimated_unless_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ISPO_CPU_PEAK_FLOPS", raising=False)
    assert peak_flops("cpu", torch.float32) == cpu_peak_flops(torch.float32)
    monkeypatch.setenv("ISPO_CPU_PEAK_FLOPS", "1.5e12")
    assert peak_flops(torch.device("cpu"), torch.bfloat16) == 1.5e12
    monkeypatch.setenv("ISPO_CPU_PEAK_FLOPS", "fast")
    with pytest.raises(IspoError, match=r"=.fast. is not a positive .*; fix or unset it"):
        peak_flops("cpu", torch.float32)


@pytest.mark.parametrize(
    ("name", "dtype", "tf32", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, False, 989e12),
        ("NVIDIA H100 80GB HBM3", torch.int8, False, 1979e12),
        ("NVIDIA H100 PCIe", torch.float16, False, 756e12),
        ("NVIDIA H100 PCIe", torch.float32, False, 51e12),
        ("NVIDIA H200", torch.bfloat16, False, 989e12),
        ("NVIDIA A100-SXM4-80GB", torch.float32, False, 19.5e12),
        ("NVIDIA A100-SXM4-80GB", torch.float32, True, 156e12),
        ("Tesla V100-SXM2-16GB", torch.float32, True, 15.7e12),
        ("Tesla V100-SXM2-16GB", torch.bfloat16, False, None),
        ("NVIDIA L40S", torch.bfloat16, False, None),
        ("NVIDIA H100 80GB HBM3", torch.float64, False, None),
    ],
)
def test_cuda_peak_table(
    monkeypatch: pytest.MonkeyPatch, name: str, dtype: torch.dtype, tf32: bool, peak: float | None
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    before = torch.backends.cuda.matmul.allow_tf32  # a computed flag: monkeypatch cannot undo it
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        assert peak_flops("cuda", dtype) == peak
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
