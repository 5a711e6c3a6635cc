"""CPU detection and the CPU peak estimate, on /proc/cpuinfo texts of known CPUs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from ispo.hardware import (
    cpu_info,
    cpu_peak_flops,
    cpu_summary,
    has_bf16_matrix_units,
    read_cpu_info,
    this_cpu,
)


def _cpuinfo(model: str, vendor: str, family: int, mhz: str, flags: str) -> str:
    block = (
        f"processor\t: {{n}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
        f"model name\t: {model}\ncpu MHz\t\t: {mhz}\nflags\t\t: fpu sse2 avx2 fma {flags}\n\n"
    )
    return block.format(n=0) + block.format(n=1)


ZEN4 = _cpuinfo("AMD EPYC", "AuthenticAMD", 25, "2600.000", "avx512f avx512_bf16 avx512_vnni")
SAPPHIRE = _cpuinfo(
    "Intel(R) Xeon(R) Platinum 8480+",
    "GenuineIntel",
    6,
    "2000.000",
    "avx512f avx512_bf16 avx512_fp16 avx512_vnni amx_bf16 amx_int8 amx_tile",
)
OLD = _cpuinfo("Intel(R) Xeon(R) CPU E5-2690 v4", "GenuineIntel", 6, "2600.000", "")


def test_reads_model_vendor_flags_and_clock() -> None:
    cpu = read_cpu_info(SAPPHIRE)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu.vendor == "GenuineIntel"
    assert cpu.mhz == 2000.0
    assert cpu.flags["amx_bf16"] and cpu.flags["avx512_fp16"]
    assert not read_cpu_info(ZEN4).flags["amx_bf16"]
    assert cpu.capability == torch.backends.cpu.get_cpu_capability()
    assert cpu.threads == torch.get_num_threads()


def test_bf16_matrix_units() -> None:
    assert has_bf16_matrix_units(read_cpu_info(SAPPHIRE))
    assert has_bf16_matrix_units(read_cpu_info(ZEN4))  # AVX512-BF16 dot products
    assert not has_bf16_matrix_units(read_cpu_info(OLD))


def _as(cpu_text: str, capability: str, cores: int = 2):
    return replace(read_cpu_info(cpu_text), capability=capability, cores=cores)


def test_peak_formula_zen4_runs_avx512_on_256_bit_pipes() -> None:
    cpu = _as(ZEN4, "AVX512")
    fp32 = 2 * 2.6e9 * (2 * 8 * 2)  # cores x clock x (2 FMA pipes x 8 fp32 lanes x 2 FLOP)
    assert cpu_peak_flops(torch.float32, cpu) == pytest.approx(fp32)
    assert cpu_peak_flops(torch.bfloat16, cpu) == pytest.approx(2 * fp32)
    assert cpu_peak_flops(torch.int8, cpu) == pytest.approx(4 * fp32)
    assert cpu_peak_flops(torch.float16, cpu) == pytest.approx(fp32)  # emulated


def test_peak_formula_amx() -> None:
    cpu = _as(SAPPHIRE, "AVX512", cores=4)
    assert cpu_peak_flops(torch.float32, cpu) == pytest.approx(4 * 2.0e9 * 64)
    assert cpu_peak_flops(torch.bfloat16, cpu) == pytest.approx(4 * 2.0e9 * 1024)
    assert cpu_peak_flops(torch.int8, cpu) == pytest.approx(4 * 2.0e9 * 2048)
    assert cpu_peak_flops(torch.float16, cpu) == pytest.approx(4 * 2.0e9 * 128)


def test_peak_unknown_without_clock_or_known_isa() -> None:
    assert cpu_peak_flops(torch.float32, _as(OLD, "DEFAULT")) is None
    assert cpu_peak_flops(torch.float32, _as("", "AVX2")) is None  # no clock
    assert cpu_peak_flops(torch.float64, _as(OLD, "AVX2")) is None


def test_cpu_info_is_json_ready_and_names_this_cpu() -> None:
    info = json.loads(json.dumps(cpu_info()))
    assert info["capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(info["peak_tflops"]) == {"fp32", "bf16", "fp16", "int8"}
    assert info["bf16_matrix_units"] == has_bf16_matrix_units(this_cpu())
    assert cpu_summary().startswith(this_cpu().model or "unknown CPU")
