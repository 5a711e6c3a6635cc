"""CPU detection on /proc/cpuinfo texts of known CPUs: model, flags, physical cores and the
clock with where it was read."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import torch

from ispo.hardware import cpu_summary, has_bf16_matrix_units, read_cpu_info, this_cpu
from ispo.provenance import cpu_info


def _cpuinfo(
    model: str, vendor: str, family: int, mhz: str, flags: str, cores: list[tuple[int, int]]
) -> str:
    """One block per logical CPU; ``cores``: its (physical id, core id), in processor order."""
    block = (
        "processor\t: {n}\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
        "model name\t: {model}\ncpu MHz\t\t: {mhz}\nphysical id\t: {pkg}\ncore id\t\t: {core}\n"
        "flags\t\t: fpu sse2 avx2 fma {flags}\n\n"
    )
    return "".join(
        block.format(
            n=n, vendor=vendor, family=family, model=model, mhz=mhz, pkg=p, core=c, flags=flags
        )
        for n, (p, c) in enumerate(cores)
    )


ZEN4 = _cpuinfo(
    "AMD EPYC", "AuthenticAMD", 25, "2600.000", "avx512f avx512_bf16 avx512_vnni", [(0, 0), (0, 1)]
)
SAPPHIRE = _cpuinfo(
    "Intel(R) Xeon(R) Platinum 8480+",
    "GenuineIntel",
    6,
    "2000.000",
    "avx512f avx512_bf16 avx512_fp16 avx512_vnni amx_bf16 amx_int8 amx_tile",
    [(0, 0), (0, 1)],
)
# 2 cores with 2 hyper-threads each: processors 0 and 2 share core 0, 1 and 3 core 1
BROADWELL_HT = _cpuinfo(
    "Intel(R) Xeon(R) CPU E5-2690 v4 @ 2.60GHz",
    "GenuineIntel",
    6,
    "1199.906",
    "",
    [(0, 0), (0, 1), (0, 0), (0, 1)],
)


def test_reads_model_vendor_flags_and_clock() -> None:
    cpu = read_cpu_info(SAPPHIRE)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu.vendor == "GenuineIntel"
    assert (cpu.mhz, cpu.clock_source) == (2000.0, "cpu MHz")
    assert cpu.flags["amx_bf16"] and cpu.flags["avx512_fp16"]
    assert not read_cpu_info(ZEN4).flags["amx_bf16"]
    assert cpu.capability == torch.backends.cpu.get_cpu_capability()
    assert cpu.threads == torch.get_num_threads()


def test_physical_cores_count_hyperthreads_once() -> None:
    usable = os.sched_getaffinity(0)
    cpu = read_cpu_info(BROADWELL_HT)
    # of the 4 processors, those this process may use; core ids 0 and 1 once each
    expected = len({(0, n % 2) for n in range(4) if n in usable})
    assert cpu.physical_cores == expected
    assert cpu.cores == len(usable)
    # no core ids (some VMs): the usable logical CPUs, not a guess
    assert read_cpu_info("processor\t: 0\nflags\t\t: avx2\n").physical_cores == len(usable)


def test_clock_source_best_first(tmp_path) -> None:
    # the model name's base clock beats cpu MHz (the clock of the instant)
    cpu = read_cpu_info(BROADWELL_HT)
    assert (cpu.mhz, cpu.clock_source) == (2600.0, "model name")
    # cpufreq's highest boost clock beats both
    (tmp_path / "cpuinfo_max_freq").write_text("3500000\n")
    cpu = read_cpu_info(BROADWELL_HT, cpufreq=tmp_path)
    assert (cpu.mhz, cpu.clock_source) == (3500.0, "cpufreq")
    # nothing: no clock
    cpu = read_cpu_info("processor\t: 0\n")
    assert (cpu.mhz, cpu.clock_source) == (None, None)


def test_bf16_matrix_units() -> None:
    assert has_bf16_matrix_units(read_cpu_info(SAPPHIRE))
    assert has_bf16_matrix_units(read_cpu_info(ZEN4))  # AVX512-BF16 dot products
    assert not has_bf16_matrix_units(read_cpu_info(BROADWELL_HT))


def test_cpu_info_is_json_ready_and_names_this_cpu_and_its_peaks(monkeypatch) -> None:
    monkeypatch.setenv("ISPO_CPU_PEAK_FLOPS", "2e11")
    info = json.loads(json.dumps(cpu_info()))
    assert info["capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["peak_tflops"] == {"fp32": 0.2, "bf16": 0.2, "fp16": 0.2, "int8": 0.2}
    assert {p["source"] for p in info["peaks"].values()} == {"ISPO_CPU_PEAK_FLOPS"}
    assert info["bf16_matrix_units"] == has_bf16_matrix_units(this_cpu())
    assert cpu_summary().startswith(this_cpu().model or "unknown CPU")


def test_cpu_summary() -> None:
    zen4 = replace(read_cpu_info(ZEN4), cores=2, physical_cores=2, capability="AVX512")
    assert cpu_summary(zen4) == (
        "AMD EPYC, 2 cores, torch ISA AVX512, 2.60 GHz (cpu MHz), avx512_bf16, avx512_vnni"
    )
    ht = replace(read_cpu_info(BROADWELL_HT), cores=4, physical_cores=2, capability="AVX2")
    assert cpu_summary(ht) == (
        "Intel(R) Xeon(R) CPU E5-2690 v4 @ 2.60GHz, 4 logical CPUs on 2 cores, torch ISA AVX2, "
        "2.60 GHz (model name), no bf16/fp16/int8 matrix units"
    )
