"""The CPU peak FLOP/s that MFU is measured against, and where that peak comes from.

MFU is only as good as its denominator, so every peak says what it is (:class:`Peak`):

measured
    The best rate of dense ``n x n`` matrix products in the dtype on torch's intra-op threads
    (:func:`measure_cpu_peaks`): ``n`` doubles from 256 until one product takes a tenth of the
    budget (at most 4096), then products repeat for the budget, one second per dtype by default.
    Measured only in the dtypes this CPU computes natively (fp32; bf16 with AMX or AVX512-BF16;
    fp16 with AMX-FP16 or AVX512-FP16). Elsewhere torch converts to fp32 around each product,
    so the hardware's limit for that dtype is the fp32 peak, and that is the one used. Cached
    per machine (CPU model, physical cores, threads, torch version and ISA) in the user cache
    folder (``ISPO_CACHE_DIR``, else ``$XDG_CACHE_HOME/ispo`` or ``~/.cache/ispo``), with when,
    how and at what machine load it was measured: on a busy machine the measured peak is low
    and MFU high, which the record shows.
nominal
    The formula (:func:`nominal_cpu_peak`): physical cores used x clock x FLOP per cycle of the
    vector units, the clock's source named (:data:`ispo.hardware.CLOCK_SOURCES`).
ISPO_CPU_PEAK_FLOPS
    The user's figure (FLOP/s, one for every dtype): wins over both.

Runs never measure on their own: the benchmark commands call :func:`prepare_cpu_peaks` once
(``--peak auto``: measure if this machine has no cached peak; ``measure``: measure again;
``nominal``: the formula), and every row and output reads the peak with :func:`cpu_peak`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ispo.errors import IspoError
from ispo.hardware import CLOCK_SOURCES, CpuInfo, load_average, this_cpu
from ispo.io.write import atomic_write
from ispo.settings import Choice

log = logging.getLogger(__name__)
CPU_PEAK_ENV = "ISPO_CPU_PEAK_FLOPS"
CACHE_ENV = "ISPO_CACHE_DIR"
DTYPE_KEYS = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.int8: "int8",
}
_DTYPES = {v: k for k, v in DTYPE_KEYS.items()}
MIN_N, MAX_N = 256, 4096


class PeakMode(Choice):
    """Which CPU peak MFU uses: ``auto`` the measured one (measured now if this machine has
    none cached), ``measure`` measured again now, ``nominal`` the formula."""

    AUTO = "auto"
    MEASURE = "measure"
    NOMINAL = "nominal"


@dataclass(frozen=True)
class Peak:
    """A dense peak for one dtype: ``flops`` (FLOP/s, None: unknown), its ``source``
    (``measured``, ``nominal``, ``ISPO_CPU_PEAK_FLOPS``, ``datasheet``) and ``how``: one line
    saying how it was measured or computed."""

    dtype: str
    flops: float | None
    source: str
    how: str

    def text(self) -> str:
        """``fp32 142 GFLOP/s, measured (best of 3 2048x2048 products ...)``."""
        if self.flops is None:
            return f"{self.dtype} peak unknown ({self.how})"
        return f"{self.dtype} {self.flops / 1e9:,.0f} GFLOP/s, {self.source} ({self.how})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- nominal: the formula ------------------------------------------------------------------


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


def _per_cycle(key: str, cpu: CpuInfo, fp32: int) -> int | None:
    """FLOP per cycle per core in ``key``'s dtype, from the fp32 figure and the matrix units."""
    if key == "fp32":
        return fp32
    if key == "bf16":
        return 1024 if cpu.has("amx_bf16") else 2 * fp32 if cpu.has("avx512_bf16") else fp32
    if key == "fp16":
        return 1024 if cpu.has("amx_fp16") else 2 * fp32 if cpu.has("avx512_fp16") else fp32
    if key == "int8":
        return 2048 if cpu.has("amx_int8") else 4 * fp32 if cpu.has("avx512_vnni") else fp32
    return None


def nominal_cpu_peak(dtype: torch.dtype, cpu: CpuInfo | None = None) -> Peak:
    """Dense peak of the cores torch uses for matrix products in ``dtype``, from the formula.

    ``peak = cores x clock x FLOP per cycle per core``; cores are the physical ones torch's
    threads can occupy (``min(physical cores, threads)``: hyper-threads share a core's units);
    FLOP per cycle for fp32 is ``2 FMA pipes x (FMA bits / 32) lanes x 2 FLOP per fused
    multiply-add`` (Intel and AMD optimisation manuals: two FMA pipes per core on every
    AVX2/AVX-512 core since Haswell and Zen 2; 256-bit pipes on Zen 4, 512-bit on Intel AVX-512
    servers and Zen 5). bf16 with AVX512-BF16 (``vdpbf16ps``) and int8 with AVX512-VNNI
    (``vpdpbusd``) do 2 and 4 products per fp32 lane; AMX 1,024 bf16/fp16 FLOP and 2,048 int8
    operations per cycle per core (Intel's Sapphire Rapids figures); fp16 counts double only
    with AVX512-FP16. Without the units torch computes the dtype in fp32: the fp32 peak.
    Unknown (``flops`` None) when the clock or the ISA is not known.
    """
    cpu = cpu or this_cpu()
    key = DTYPE_KEYS.get(dtype, str(dtype))
    bits = _fma_bits(cpu)
    if bits is None or not cpu.mhz:
        why = "no clock reported" if not cpu.mhz else f"no FMA width known for {cpu.capability}"
        return Peak(key, None, "nominal", why)
    per_cycle = _per_cycle(key, cpu, 2 * (bits // 32) * 2)
    if per_cycle is None:
        return Peak(key, None, "nominal", f"no formula for {key}")
    cores = min(cpu.physical_cores, cpu.threads)
    how = (
        f"{cores} physical cores x {cpu.mhz / 1000:.2f} GHz x {per_cycle} FLOP/cycle; clock "
        f"from {CLOCK_SOURCES[cpu.clock_source]}"
    )
    return Peak(key, cores * cpu.mhz * 1e6 * per_cycle, "nominal", how)


# --- measured: dense matrix products, cached per machine -----------------------------------


def native_dtypes(cpu: CpuInfo | None = None) -> list[str]:
    """The dtypes whose matrix products this CPU computes natively (measured, not converted)."""
    cpu = cpu or this_cpu()
    native = ["fp32"]
    if cpu.has("amx_bf16") or cpu.has("avx512_bf16"):
        native.append("bf16")
    if cpu.has("amx_fp16") or cpu.has("avx512_fp16"):
        native.append("fp16")
    return native


def _cache_key(cpu: CpuInfo) -> dict[str, Any]:
    return {
        "model": cpu.model,
        "physical_cores": cpu.physical_cores,
        "threads": cpu.threads,
        "capability": cpu.capability,
        "torch": torch.__version__,
    }


def cache_path(cpu: CpuInfo | None = None) -> Path:
    """Where this machine's measured peaks are kept (one file per CPU, cores, threads, torch)."""
    cpu = cpu or this_cpu()
    root = os.environ.get(CACHE_ENV) or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "ispo"
    )
    digest = hashlib.sha1(json.dumps(_cache_key(cpu), sort_keys=True).encode()).hexdigest()
    return Path(root) / f"cpu-peak-{digest[:12]}.json"


def _time_product(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> float:
    t = time.perf_counter()
    torch.mm(a, b, out=out)
    return time.perf_counter() - t


def _product_rate(dtype: torch.dtype, budget_s: float) -> dict[str, Any]:
    """Best FLOP/s of ``n x n`` products in ``dtype`` within about ``budget_s`` seconds."""
    n = MIN_N
    while True:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        out = torch.empty(n, n, dtype=dtype)
        torch.mm(a, b, out=out)  # first call at this size: allocation, kernel choice
        t = _time_product(a, b, out)
        if t >= budget_s / 10 or n >= MAX_N:
            break
        n *= 2
    times, t0 = [t], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - t0 < budget_s:
        times.append(_time_product(a, b, out))
    return {"flops": 2.0 * n**3 / min(times), "n": n, "runs": len(times)}


def measure_cpu_peaks(budget_s: float = 1.0, cpu: CpuInfo | None = None) -> dict[str, Any]:
    """Measure the dense product peak of each native dtype (:func:`native_dtypes`), about
    ``budget_s`` seconds each, and cache it (:func:`cache_path`); returns the record."""
    cpu = cpu or this_cpu()
    load = load_average()
    record = {
        "key": _cache_key(cpu),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": load,
        "cores": cpu.cores,
        "peaks": {k: _product_rate(_DTYPES[k], budget_s) for k in native_dtypes(cpu)},
    }
    if load is not None and load > cpu.cores:
        log.warning(
            "CPU peak measured while the machine was busy (load average %.1f on %d CPUs): the "
            "peak reads low and MFU high; measure again when it is quiet (--peak measure)",
            load,
            cpu.cores,
        )
    path = cache_path(cpu)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(record, indent=2))
    return record


def cached_cpu_peaks(cpu: CpuInfo | None = None) -> dict[str, Any] | None:
    """This machine's measured record, or None when there is none (or it is unreadable, or
    made for another CPU, thread count or torch)."""
    cpu = cpu or this_cpu()
    try:
        record = json.loads(cache_path(cpu).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != _cache_key(cpu):
        return None
    return record


def prepare_cpu_peaks(mode: PeakMode | str, budget_s: float = 1.0) -> None:
    """Make the peak that ``mode`` asks for available before a benchmark: measure now under
    ``measure``, or under ``auto`` when nothing is cached; nothing under ``nominal``."""
    mode = PeakMode.parse(mode, "--peak")
    if os.environ.get(CPU_PEAK_ENV) or mode == PeakMode.NOMINAL:
        return
    if mode == PeakMode.MEASURE or cached_cpu_peaks() is None:
        log.info("measuring this CPU's dense matrix-product peak (about %.0f s)", budget_s)
        measure_cpu_peaks(budget_s)


def _measured_peak(key: str, record: dict[str, Any]) -> Peak | None:
    """``key``'s measured peak from ``record``: its own where native, fp32's where the CPU
    computes ``key`` in fp32; None for int8 (not measured)."""
    if key == "int8":
        return None
    native = key in record["peaks"]
    m = record["peaks"][key if native else "fp32"]
    load = record["load_average"]
    how = (
        f"best of {m['runs']} {m['n']}x{m['n']} {key if native else 'fp32'} products on "
        f"{record['key']['threads']} threads, {record['created']}, load average "
        + ("unknown" if load is None else f"{load:.1f}")
        + f" on {record['cores']} CPUs"
    )
    if not native:
        how = f"fp32's: this CPU computes {key} products in fp32; " + how
    return Peak(key, m["flops"], "measured", how)


def _user_peak(key: str) -> Peak | None:
    raw = os.environ.get(CPU_PEAK_ENV)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise IspoError(
            f"{CPU_PEAK_ENV}={raw!r} is not a positive number of FLOP/s; fix or unset it"
        )
    return Peak(key, value, CPU_PEAK_ENV, f"set by the user ({CPU_PEAK_ENV}={raw})")


def cpu_peak(
    dtype: torch.dtype, mode: PeakMode | str = PeakMode.AUTO, cpu: CpuInfo | None = None
) -> Peak:
    """The CPU peak MFU uses for ``dtype``: ``ISPO_CPU_PEAK_FLOPS`` when set; else, unless
    ``mode`` is ``nominal``, this machine's cached measured peak; else the formula. Never
    measures (:func:`prepare_cpu_peaks` does)."""
    cpu = cpu or this_cpu()
    key = DTYPE_KEYS.get(dtype, str(dtype))
    user = _user_peak(key)
    if user is not None:
        return user
    record = None
    if PeakMode.parse(mode, "--peak") != PeakMode.NOMINAL:
        record = cached_cpu_peaks(cpu)
    measured = None if record is None else _measured_peak(key, record)
    return measured or nominal_cpu_peak(dtype, cpu)


def cpu_peaks(mode: PeakMode | str = PeakMode.AUTO) -> dict[str, Peak]:
    """:func:`cpu_peak` of every dtype a method computes in (fp32, bf16, fp16, int8)."""
    return {key: cpu_peak(dtype, mode) for dtype, key in DTYPE_KEYS.items()}
