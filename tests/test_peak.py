"""The CPU peak MFU is measured against: the formula with written-out figures, the measured
peak's record and cache, and which one a run uses (``ISPO_CPU_PEAK_FLOPS`` > measured >
nominal). No assertion depends on how fast this machine is."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from ispo.errors import IspoError
from ispo.hardware import read_cpu_info, this_cpu
from ispo.peak import (
    Peak,
    PeakMode,
    cache_path,
    cached_cpu_peaks,
    cpu_peak,
    measure_cpu_peaks,
    native_dtypes,
    nominal_cpu_peak,
    prepare_cpu_peaks,
)
from test_hardware import BROADWELL_HT, SAPPHIRE, ZEN4


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder of this test's own, no user figure."""
    monkeypatch.setenv("ISPO_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("ISPO_CPU_PEAK_FLOPS", raising=False)
    return tmp_path


def _as(text: str, capability: str, cores: int, threads: int = 64):
    return replace(
        read_cpu_info(text), capability=capability, physical_cores=cores, threads=threads
    )


def test_nominal_zen4_runs_avx512_on_256_bit_pipes() -> None:
    cpu = _as(ZEN4, "AVX512", cores=2)
    fp32 = 2 * 2.6e9 * (2 * 8 * 2)  # cores x clock x (2 FMA pipes x 8 fp32 lanes x 2 FLOP)
    assert nominal_cpu_peak(torch.float32, cpu) == Peak(
        "fp32",
        pytest.approx(fp32),
        "nominal",
        "2 physical cores x 2.60 GHz x 32 FLOP/cycle; clock from /proc/cpuinfo cpu MHz (in a "
        "VM the host's nominal clock, on bare metal the clock at that instant: boost clocks may "
        "be higher)",
    )
    assert nominal_cpu_peak(torch.bfloat16, cpu).flops == pytest.approx(2 * fp32)
    assert nominal_cpu_peak(torch.int8, cpu).flops == pytest.approx(4 * fp32)
    assert nominal_cpu_peak(torch.float16, cpu).flops == pytest.approx(fp32)  # emulated


def test_nominal_amx() -> None:
    cpu = _as(SAPPHIRE, "AVX512", cores=4)
    assert nominal_cpu_peak(torch.float32, cpu).flops == pytest.approx(4 * 2.0e9 * 64)
    assert nominal_cpu_peak(torch.bfloat16, cpu).flops == pytest.approx(4 * 2.0e9 * 1024)
    assert nominal_cpu_peak(torch.int8, cpu).flops == pytest.approx(4 * 2.0e9 * 2048)
    assert nominal_cpu_peak(torch.float16, cpu).flops == pytest.approx(4 * 2.0e9 * 128)


def test_nominal_counts_physical_cores_the_threads_can_use() -> None:
    """4 hyper-threads on 2 cores: 2 cores' units; 1 torch thread: 1 core's."""
    cpu = _as(BROADWELL_HT, "AVX2", cores=2)
    assert nominal_cpu_peak(torch.float32, cpu) == Peak(
        "fp32",
        pytest.approx(2 * 2.6e9 * 32),
        "nominal",
        "2 physical cores x 2.60 GHz x 32 FLOP/cycle; clock from the base clock in the model "
        "name (all-core boost clocks are often higher: a peak from it may be low)",
    )
    one = replace(cpu, threads=1)
    assert nominal_cpu_peak(torch.float32, one).flops == pytest.approx(2.6e9 * 32)


def test_nominal_unknown_without_clock_or_known_isa() -> None:
    assert nominal_cpu_peak(torch.float32, _as(BROADWELL_HT, "DEFAULT", 2)) == Peak(
        "fp32", None, "nominal", "no FMA width known for DEFAULT"
    )
    no_clock = _as("processor\t: 0\nflags\t\t: avx2\n", "AVX2", 2)
    assert nominal_cpu_peak(torch.float32, no_clock).how == "no clock reported"
    assert nominal_cpu_peak(torch.float64, _as(ZEN4, "AVX2", 2)).flops is None


def test_native_dtypes() -> None:
    assert native_dtypes(read_cpu_info(SAPPHIRE)) == ["fp32", "bf16", "fp16"]
    assert native_dtypes(read_cpu_info(ZEN4)) == ["fp32", "bf16"]
    assert native_dtypes(read_cpu_info(BROADWELL_HT)) == ["fp32"]


def test_measured_record_is_cached_and_used(cache) -> None:
    record = measure_cpu_peaks(budget_s=0.02)
    assert set(record["peaks"]) == set(native_dtypes())
    fp32 = record["peaks"]["fp32"]
    assert fp32["flops"] > 0 and fp32["runs"] >= 3 and fp32["n"] in (256, 512, 1024, 2048, 4096)
    assert record["key"]["torch"] == torch.__version__
    assert json.loads(cache_path().read_text()) == record == cached_cpu_peaks()
    used = cpu_peak(torch.float32)
    assert (used.source, used.flops) == ("measured", fp32["flops"])
    assert used.how.startswith(f"best of {fp32['runs']} {fp32['n']}x{fp32['n']} fp32 products")
    assert f"on {this_cpu().threads} threads" in used.how and "load average" in used.how
    # int8 is never measured: the formula, said so
    assert cpu_peak(torch.int8).source == "nominal"
    # asked for the formula: the formula, though a measured peak is cached
    assert cpu_peak(torch.float32, "nominal") == nominal_cpu_peak(torch.float32)


def test_a_dtype_without_units_uses_the_fp32_peak(cache) -> None:
    if "bf16" in native_dtypes():
        pytest.skip("this CPU computes bf16 natively: its own peak is measured")
    record = measure_cpu_peaks(budget_s=0.02)
    used = cpu_peak(torch.bfloat16)
    assert used.flops == record["peaks"]["fp32"]["flops"]
    assert used.how.startswith("fp32's: this CPU computes bf16 products in fp32; best of")


def test_a_cache_of_another_machine_or_torch_is_ignored(cache) -> None:
    record = measure_cpu_peaks(budget_s=0.02)
    record["key"]["torch"] = "1.0.0"
    cache_path().write_text(json.dumps(record))
    assert cached_cpu_peaks() is None
    assert cpu_peak(torch.float32).source == "nominal"
    cache_path().write_text("{not json")
    assert cached_cpu_peaks() is None


def test_prepare_measures_once_per_machine_unless_asked(cache) -> None:
    prepare_cpu_peaks("nominal")
    assert not cache_path().exists()  # the formula needs no measurement
    prepare_cpu_peaks(PeakMode.AUTO, budget_s=0.02)
    first = cached_cpu_peaks()
    assert first is not None
    cache_path().write_text(json.dumps({**first, "created": "marker"}))
    prepare_cpu_peaks("auto", budget_s=0.02)
    assert cached_cpu_peaks()["created"] == "marker"  # cached: not measured again
    prepare_cpu_peaks("measure", budget_s=0.02)
    assert cached_cpu_peaks()["created"] != "marker"  # asked: measured again
    with pytest.raises(IspoError, match=r"--peak must be one of auto, measure, nominal, not 'x'"):
        prepare_cpu_peaks("x")


def test_the_users_figure_wins(cache, monkeypatch) -> None:
    record = measure_cpu_peaks(budget_s=0.02)
    monkeypatch.setenv("ISPO_CPU_PEAK_FLOPS", "1.5e12")
    assert cpu_peak(torch.bfloat16) == Peak(
        "bf16", 1.5e12, "ISPO_CPU_PEAK_FLOPS", "set by the user (ISPO_CPU_PEAK_FLOPS=1.5e12)"
    )
    prepare_cpu_peaks("measure")  # nothing to measure: the user's figure is used
    assert cached_cpu_peaks() == record
    monkeypatch.setenv("ISPO_CPU_PEAK_FLOPS", "fast")
    with pytest.raises(IspoError, match=r"=.fast. is not a positive .*; fix or unset it"):
        cpu_peak(torch.float32)


def test_peak_text() -> None:
    assert Peak("fp32", 1.42e11, "measured", "how").text() == "fp32 142 GFLOP/s, measured (how)"
    assert Peak("int8", None, "nominal", "no clock").text() == "int8 peak unknown (no clock)"
