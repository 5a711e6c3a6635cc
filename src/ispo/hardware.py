"""What CPU this is: model, cores (logical and physical), its clock and where that clock was
read, the ISA torch dispatches to, and its bf16/fp16/int8 units.

Speed figures differ between CPUs more than between methods (a CPU with AMX runs bf16 matrix
products 10x faster than one without), so every result records the CPU, and the benchmark
shows MFU against its peak (:mod:`ispo.peak`).

Everything is read from ``/proc/cpuinfo``, cpufreq (Linux) and torch; elsewhere the fields are
``None`` (unknown), never guessed.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
CPUFREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq")
# the /proc/cpuinfo flags that decide which low-precision arithmetic is native
MATRIX_FLAGS = ("amx_bf16", "amx_int8", "amx_fp16", "avx512_bf16", "avx512_fp16", "avx512_vnni")
# where the clock was read, best first, and what that clock is
CLOCK_SOURCES = {
    "cpufreq": "cpufreq cpuinfo_max_freq, the highest boost clock (all-core clocks are lower: "
    "a peak from it is an upper bound)",
    "model name": "the base clock in the model name (all-core boost clocks are often higher: "
    "a peak from it may be low)",
    "cpu MHz": "/proc/cpuinfo cpu MHz (in a VM the host's nominal clock, on bare metal the "
    "clock at that instant: boost clocks may be higher)",
}


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
    physical_cores
        Physical cores among them (distinct ``physical id``/``core id`` pairs): two
        hyper-threads share one core's vector units. ``cores`` where cpuinfo does not say.
    threads
        torch's intra-op threads (``torch.get_num_threads``).
    capability
        The vector ISA torch's kernels dispatch to (``torch.backends.cpu.get_cpu_capability``):
        ``DEFAULT``, ``AVX2``, ``AVX512``...
    flags
        Which of :data:`MATRIX_FLAGS` the CPU has.
    mhz
        The clock, from the best of :data:`CLOCK_SOURCES` this machine has.
    clock_source
        Which one (a key of :data:`CLOCK_SOURCES`); None with no clock.
    """

    model: str | None
    vendor: str | None
    family: int | None
    cores: int
    physical_cores: int
    threads: int
    capability: str
    flags: dict[str, bool]
    mhz: float | None
    clock_source: str | None = None

    def has(self, flag: str) -> bool:
        return bool(self.flags.get(flag))


def _processors(text: str) -> list[dict[str, str]]:
    """Each processor's ``key: value`` fields, in order."""
    blocks: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if fields:
                blocks.append(fields)
                fields = {}
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return blocks


def _usable() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return set(range(os.cpu_count() or 1))


def _physical(procs: list[dict[str, str]], usable: set[int]) -> int:
    """Distinct (package, core) pairs among the usable processors; their count where unknown."""
    pairs = {
        (p.get("physical id"), p["core id"])
        for p in procs
        if "core id" in p and p.get("processor", "").isdigit() and int(p["processor"]) in usable
    }
    return len(pairs) or len(usable)


def _clock(first: dict[str, str], cpufreq: Path | None) -> tuple[float | None, str | None]:
    """The clock in MHz and its source (:data:`CLOCK_SOURCES`, best first)."""
    try:
        khz = float((cpufreq / "cpuinfo_max_freq").read_text()) if cpufreq else None
    except (OSError, ValueError):
        khz = None
    if khz:
        return khz / 1000, "cpufreq"
    base = re.search(r"@\s*([\d.]+)\s*GHz", first.get("model name", ""))
    if base:
        return float(base.group(1)) * 1000, "model name"
    try:
        return float(first["cpu MHz"]), "cpu MHz"
    except (KeyError, ValueError):
        return None, None


def read_cpu_info(cpuinfo_text: str | None = None, cpufreq: Path | None = None) -> CpuInfo:
    """Build :class:`CpuInfo` from ``cpuinfo_text`` and the ``cpufreq`` folder (default: this
    machine's ``/proc/cpuinfo``, and its cpufreq only when reading this machine's cpuinfo)."""
    if cpuinfo_text is None:
        cpufreq = CPUFREQ if cpufreq is None else cpufreq
        try:
            cpuinfo_text = CPUINFO.read_text()
        except OSError:  # not Linux
            cpuinfo_text = ""
    procs = _processors(cpuinfo_text)
    first = procs[0] if procs else {}
    flags = set(first.get("flags", "").split())
    usable = _usable()
    mhz, source = _clock(first, cpufreq)
    family = first.get("cpu family", "")
    return CpuInfo(
        model=first.get("model name") or platform.processor() or None,
        vendor=first.get("vendor_id"),
        family=int(family) if family.isdigit() else None,
        cores=len(usable),
        physical_cores=_physical(procs, usable),
        threads=torch.get_num_threads(),
        capability=torch.backends.cpu.get_cpu_capability(),
        flags={f: f in flags for f in MATRIX_FLAGS},
        mhz=mhz,
        clock_source=source,
    )


@lru_cache(maxsize=1)
def this_cpu() -> CpuInfo:
    """This machine's :class:`CpuInfo` (read once per process)."""
    return read_cpu_info()


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none): above the CPU count,
    other processes competed for the cores and speed figures read low."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


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


def cpu_summary(cpu: CpuInfo | None = None) -> str:
    """One line naming the CPU for headers: ``AMD EPYC, 2 cores, torch ISA AVX512, ...``."""
    cpu = cpu or this_cpu()
    flags = [f for f in MATRIX_FLAGS if cpu.has(f)]
    cores = f"{cpu.cores} cores"
    if cpu.physical_cores != cpu.cores:
        cores = f"{cpu.cores} logical CPUs on {cpu.physical_cores} cores"
    parts = [cpu.model or "unknown CPU", cores, f"torch ISA {cpu.capability}"]
    if cpu.mhz:
        parts.append(f"{cpu.mhz / 1000:.2f} GHz ({cpu.clock_source})")
    parts.append(", ".join(flags) if flags else "no bf16/fp16/int8 matrix units")
    return ", ".join(parts)
