"""What CPU this is: model, cores, the ISA torch dispatches to, bf16/fp16/int8 units, peak FLOP/s.

Speed figures differ between CPUs more than between methods (a CPU with AMX runs bf16 matrix
products 10x faster than one without), so every result records :func:`cpu_info` and the
benchmark shows MFU on CPUs from :func:`cpu_peak_flops`.

Everything is read from ``/proc/cpuinfo`` (Linux) and torch; elsewhere the fields are
``None`` (unknown), never guessed.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

CPUINFO = Path("/proc/cpuinfo")
# the /proc/cpuinfo flags that decide which low-precision arithmetic is native
MATRIX_FLAGS = ("amx_bf16", "amx_int8", "amx_fp16", "avx512_bf16", "avx512_fp16", "avx512_vnni")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as torch sees it; ``None`` where the platform does not say.

    Attributes
    ----------
    model
        Marketing name (``model name``), e.g. ``AMD EPYC 9654``; virtual machines may shorten it.
    vendor
        ``GenuineIntel``, ``AuthenticAMD``... (``vendor_id``).
    family
        ``cpu family`` (AMD: 25 = Zen 3/Zen 4, 26 = Zen 5).
    cores
        Logical CPUs this process may use (``os.sched_getaffinity``).
    threads
        torch's intra-op threads (``torch.get_num_threads``).
    capability
        The vector ISA torch's kernels dispatch to (``torch.backends.cpu.get_cpu_capability``):
        ``DEFAULT``, ``AVX2``, ``AVX512``...
    flags
        Which of :data:`MATRIX_FLAGS` the CPU has.
    mhz
        Clock from ``/proc/cpuinfo`` (``cpu MHz``: the current or, in a VM, the nominal clock).
    """

    model: str | None
    vendor: str | None
    family: int | None
    cores: int
    threads: int
    capability: str
    flags: dict[str, bool]
    mhz: float | None

    def has(self, flag: str) -> bool:
        return bool(self.flags.get(flag))


def _parse_cpuinfo(text: str) -> dict[str, str]:
    """The first processor's ``key: value`` fields (all processors of a host share them)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def read_cpu_info(cpuinfo_text: str | None = None) -> CpuInfo:
    """Build :class:`CpuInfo` from ``cpuinfo_text`` (default: this machine's ``/proc/cpuinfo``)."""
    if cpuinfo_text is None:
        try:
            cpuinfo_text = CPUINFO.read_text()
        except OSError:  # not Linux
            cpuinfo_text = ""
    fields = _parse_cpuinfo(cpuinfo_text)
    flags = set(fields.get("flags", "").split())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cores = os.cpu_count() or 1
    try:
        mhz = float(fields["cpu MHz"])
    except (KeyError, ValueError):
        mhz = None
    family = fields.get("cpu family", "")
    return CpuInfo(
        model=fields.get("model name") or platform.processor() or None,
        vendor=fields.get("vendor_id"),
        family=int(family) if family.isdigit() else None,
        cores=cores,
        threads=torch.get_num_threads(),
        capability=torch.backends.cpu.get_cpu_capability(),
        flags={f: f in flags for f in MATRIX_FLAGS},
        mhz=mhz,
    )


@lru_cache(maxsize=1)
def this_cpu() -> CpuInfo:
    """This machine's :class:`CpuInfo` (read once per process)."""
    return read_cpu_info()


def bf16_matrix_flags(cpu: CpuInfo | None = None) -> list[str]:
    """The flags by which bf16 matrix products run in hardware (AMX-BF16, AVX512-BF16); empty
    when they do not.

    oneDNN (torch's CPU GEMM) runs bf16 products on AMX tiles where present, else on the
    AVX512-BF16 dot-product instruction (``vdpbf16ps``, two bf16 products per fp32 lane). Either
    beats fp32: on a 2-core AMD EPYC (Zen 4, AVX512-BF16, no AMX) a 4096x256 @ 256x1024 product
    ran 2.4x faster in bf16 than in fp32, on an Intel CPU with AMX 3.6x (issue 15). Without
    either, torch converts bf16 to fp32 around every product and bf16 is slower than fp32.
    """
    cpu = cpu or this_cpu()
    return [f for f in ("amx_bf16", "avx512_bf16") if cpu.has(f)]


def has_bf16_matrix_units(cpu: CpuInfo | None = None) -> bool:
    """True when bf16 matrix products run in hardware (:func:`bf16_matrix_flags`)."""
    return bool(bf16_matrix_flags(cpu))


HALF_UNITS = {"bf16": ("amx_bf16", "avx512_bf16"), "fp16": ("amx_fp16", "avx512_fp16")}


def slow_half_precision(precision: str, cpu: CpuInfo | None = None) -> str | None:
    """Why ``precision`` (bf16 or fp16) runs slower than fp32 on this CPU, or None when it has
    matrix units for it (or ``precision`` is not a half format).

    Without AMX or the AVX-512 bf16/fp16 instructions torch converts to fp32 around every
    product: on the 2-core AVX2 EPYC of issue 25 ``--precision bf16`` ran ~5x slower than fp32
    while only ``auto`` said why it avoids bf16.
    """
    units = HALF_UNITS.get(str(precision))
    cpu = cpu or this_cpu()
    if units is None or any(cpu.has(f) for f in units):
        return None
    return (
        f"this CPU has no {precision} matrix units ({' or '.join(units)}): torch converts "
        f"{precision} to fp32 around every product, so it runs slower than fp32"
    )


def _fma_bits(cpu: CpuInfo) -> int | None:
    """Bits per FMA pipe: 512 with AVX-512 (Intel, AMD Zen 5), 256 on AMD Zen 4 (AVX-512
    instructions run as two 256-bit halves), 256 with AVX2; None for other ISAs (unknown)."""
    if cpu.capability.startswith("AVX512"):
        if cpu.vendor == "AuthenticAMD" and cpu.family is not None and cpu.family < 26:
            return 256
        return 512
    if cpu.capability.startswith("AVX2"):
        return 256
    return None


def cpu_peak_flops(dtype: torch.dtype, cpu: CpuInfo | None = None) -> float | None:
    """Estimated dense peak FLOP/s of this CPU's usable cores for matrix products in ``dtype``.

    ``peak = cores x clock x FLOP per cycle per core``, where FLOP per cycle per core is
    ``2 FMA pipes x (FMA bits / 32) fp32 lanes x 2 FLOP per fused multiply-add`` for fp32
    (Intel and AMD optimisation manuals: two FMA pipes per core on every AVX2/AVX-512 core since
    Haswell and Zen 2; 256-bit pipes on Zen 4, 512-bit on Intel AVX-512 servers and Zen 5).
    bf16 with AVX512-BF16 (``vdpbf16ps``) and int8 with AVX512-VNNI (``vpdpbusd``) do 2 and 4
    products per fp32 lane, so 2x and 4x that; AMX, where present, 1,024 bf16 FLOP and 2,048
    int8 operations per cycle per core (Intel's Sapphire Rapids figures). fp16 counts only with
    AVX512-FP16 or AMX-FP16 (2x fp32); without them torch emulates it, so its peak is the fp32
    one. None when a factor is unknown (clock not reported, ISA other than AVX2/AVX-512):
    MFU is then shown as unknown rather than against a guessed peak.

    The clock is ``/proc/cpuinfo``'s, not the all-core turbo: a peak a little low makes MFU a
    little high. ``ISPO_CPU_PEAK_FLOPS`` (see :func:`ispo.bench.flops.peak_flops`) overrides.
    """
    cpu = cpu or this_cpu()
    bits = _fma_bits(cpu)
    if bits is None or not cpu.mhz:
        return None
    fp32_per_cycle = 2 * (bits // 32) * 2
    if dtype == torch.bfloat16:
        if cpu.has("amx_bf16"):
            per_cycle = 1024
        elif cpu.has("avx512_bf16"):
            per_cycle = 2 * fp32_per_cycle
        else:
            per_cycle = fp32_per_cycle
    elif dtype == torch.float16:
        if cpu.has("amx_fp16"):
            per_cycle = 1024
        else:
            per_cycle = 2 * fp32_per_cycle if cpu.has("avx512_fp16") else fp32_per_cycle
    elif dtype == torch.int8:
        if cpu.has("amx_int8"):
            per_cycle = 2048
        else:
            per_cycle = 4 * fp32_per_cycle if cpu.has("avx512_vnni") else fp32_per_cycle
    elif dtype == torch.float32:
        per_cycle = fp32_per_cycle
    else:
        return None
    return cpu.cores * cpu.mhz * 1e6 * per_cycle


def cpu_info() -> dict[str, Any]:
    """This CPU as a JSON-ready dict for results' metadata, with peaks in TFLOP/s per dtype."""
    cpu = this_cpu()
    peaks = {
        key: cpu_peak_flops(dt, cpu)
        for key, dt in (
            ("fp32", torch.float32),
            ("bf16", torch.bfloat16),
            ("fp16", torch.float16),
            ("int8", torch.int8),
        )
    }
    return {
        **asdict(cpu),
        "bf16_matrix_units": has_bf16_matrix_units(cpu),
        "peak_tflops": {k: None if v is None else v / 1e12 for k, v in peaks.items()},
    }


def cpu_summary(cpu: CpuInfo | None = None) -> str:
    """One line naming the CPU for headers: ``AMD EPYC, 2 cores, torch ISA AVX512, ...``."""
    cpu = cpu or this_cpu()
    flags = [f for f in MATRIX_FLAGS if cpu.has(f)]
    parts = [cpu.model or "unknown CPU", f"{cpu.cores} cores", f"torch ISA {cpu.capability}"]
    if cpu.mhz:
        parts.append(f"{cpu.mhz / 1000:.2f} GHz")
    parts.append(", ".join(flags) if flags else "no bf16/fp16/int8 matrix units")
    return ", ".join(parts)
