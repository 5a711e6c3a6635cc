"""FLOP counts against the reference table, MFU arithmetic and the peak table lookup."""

import numpy as np
import pytest
import torch

from ispo.bench.flops import device_peak, encoder_flops, mfu, mlm_head_flops
from ispo.peak import Peak, cpu_peak

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


def test_cpu_peak_is_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU the device's peak is :func:`ispo.peak.cpu_peak` (tested in tests/test_peak.py)."""
    monkeypatch.delenv("ISPO_CPU_PEAK_FLOPS", raising=False)
    assert device_peak("cpu", torch.float32, "nominal") == cpu_peak(torch.float32, "nominal")
    monkeypatch.setenv("ISPO_CPU_PEAK_FLOPS", "1.5e12")
    assert device_peak(torch.device("cpu"), torch.bfloat16).flops == 1.5e12
    assert device_peak("mps", torch.float32) == Peak(
        "fp32", None, "unknown", "no peak known for device type 'mps'"
    )


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
        got = device_peak("cuda", dtype)
        assert (got.flops, got.source) == (peak, "datasheet")
        assert got.how.startswith(name)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
