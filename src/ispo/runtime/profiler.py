"""One profiler for every run, so embed, perturb and benchmark figures are comparable.

A background thread samples the process's CPU time and resident memory, and on CUDA the GPU
utilisation and device memory in use (through NVML, when it is available). Wall time is taken with
:func:`time.perf_counter` around CUDA synchronisations, so queued kernels are counted where they
run, not where they were launched.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, NamedTuple

import psutil
import torch

_MIB = float(1 << 20)


@dataclass(frozen=True)
class ProfileStats:
    """Figures from one profiled block.

    Averages cover the steady part (from :meth:`Profiler.mark_steady` on) when it was marked, the
    whole block otherwise: warm-up (allocation, compilation, cache filling) would bias them. Peaks
    always cover the whole block, because a run that does not fit during warm-up does not fit.

    Attributes
    ----------
    wall_s
        Wall time of the whole block, in seconds.
    steady_wall_s
        Wall time from :meth:`Profiler.mark_steady` to the end; None when it was not called.
    cpu_percent_avg, cpu_percent_peak
        Process CPU use summed over cores (200 = two cores busy), the same measure as
        :meth:`psutil.Process.cpu_percent`. The average is exact (CPU time over wall time); the peak
        is the highest over sampling intervals.
    cpu_percent_avg_per_core
        ``cpu_percent_avg`` divided by :func:`psutil.cpu_count`, so 100 means every core busy.
    rss_peak_bytes, rss_avg_bytes
        Resident host memory of the process.
    gpu_util_avg, gpu_util_peak
        NVML GPU utilisation, in percent (share of time a kernel was running); None off CUDA or
        without NVML.
    gpu_mem_peak_bytes
        Peak of :func:`torch.cuda.max_memory_allocated` (tensors only); None off CUDA.
    gpu_mem_used_peak_bytes
        Peak device memory in use as NVML reports it (all processes, plus the CUDA context and
        the allocator's cache); None off CUDA or without NVML.
    n_samples
        Number of samples taken, the ones at start and stop included.
    """

    wall_s: float
    steady_wall_s: float | None
    cpu_percent_avg: float
    cpu_percent_peak: float
    cpu_percent_avg_per_core: float
    rss_peak_bytes: int
    rss_avg_bytes: int
    gpu_util_avg: float | None
    gpu_util_peak: float | None
    gpu_mem_peak_bytes: int | None
    gpu_mem_used_peak_bytes: int | None
    n_samples: int

    def to_dict(self) -> dict[str, Any]:
        """Return the fields plus MiB conversions of the byte counts (``*_mib``), JSON-ready."""
        out: dict[str, Any] = asdict(self)
        for key in ("rss_peak", "rss_avg", "gpu_mem_peak", "gpu_mem_used_peak"):
            value = out[f"{key}_bytes"]
            out[f"{key}_mib"] = None if value is None else value / _MIB
        return out


class _Sample(NamedTuple):
    t: float
    cpu_s: float
    rss: int
    gpu_util: float | None
    gpu_mem_used: int | None


class Profiler:
    """Context manager recording wall time, CPU, host memory and GPU figures of a block.

    Parameters
    ----------
    device
        Device the block computes on. On CUDA the clock is read after a synchronisation, the
        allocator's peak is reset on entry, and NVML is queried if ``pynvml`` can be initialised.
    interval
        Seconds between background samples. One sample is always taken at start and one at stop,
        so blocks shorter than ``interval`` still get figures.

    Examples
    --------
    >>> with Profiler(device="cpu") as prof:  # doctest: +SKIP
    ...     warm_up()
    ...     prof.mark_steady()
    ...     run()
    >>> prof.stats.to_dict()  # doctest: +SKIP
    """

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.1) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.device = torch.device(device)
        self.interval = interval
        self._cuda = self.device.type == "cuda"
        self._process = psutil.Process()
        self._nvml: Any = None
        self._nvml_handle: Any = None
        self._samples: list[_Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._steady_index: int | None = None
        self._stats: ProfileStats | None = None

    def __enter__(self) -> Profiler:
        self._samples, self._steady_index, self._stats = [], None, None
        self._stop.clear()
        if self._cuda:
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._open_nvml()
        self._t0 = time.perf_counter()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="ispo-profiler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            try:
                if self._cuda:
                    torch.cuda.synchronize(self.device)
                t_end = time.perf_counter()
            finally:
                self._stop.set()
                if self._thread is not None:
                    self._thread.join()
                    self._thread = None
            self._sample()
            gpu_peak = torch.cuda.max_memory_allocated(self.device) if self._cuda else None
            self._stats = self._summarise(t_end, gpu_peak)
        finally:
            self._close_nvml()

    def mark_steady(self) -> None:
        """Mark the end of warm-up: averages are computed from here on."""
        if self._thread is None:
            raise RuntimeError("mark_steady() must be called inside the `with Profiler()` block")
        if self._cuda:
            torch.cuda.synchronize(self.device)
        self._steady_index = self._sample()

    @property
    def stats(self) -> ProfileStats:
        """The figures of the finished block (see :class:`ProfileStats`)."""
        if self._stats is None:
            raise RuntimeError("profile stats are available once the `with Profiler()` block ends")
        return self._stats

    def result(self) -> ProfileStats:
        """Return :attr:`stats`."""
        return self.stats

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> int:
        """Append one sample and return its index."""
        # process_time: CPU time of every thread, at ns resolution (psutil's cpu_times ticks in
        # 10 ms, which reads 0 % over a short block)
        cpu_s = time.process_time()
        rss = self._process.memory_info().rss
        util, used = self._read_nvml()
        sample = _Sample(time.perf_counter(), cpu_s, rss, util, used)
        with self._lock:
            self._samples.append(sample)
            return len(self._samples) - 1

    def _open_nvml(self) -> None:
        """Initialise NVML and find this device's handle by UUID, which survives
        ``CUDA_VISIBLE_DEVICES`` renumbering; leave GPU sampling off on any failure."""
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            uuid = str(torch.cuda.get_device_properties(self.device).uuid)
        except Exception:
            return
        names = [uuid] if uuid.startswith(("GPU-", "MIG-")) else [f"GPU-{uuid}", f"MIG-{uuid}"]
        for name in names:
            try:
                self._nvml_handle = pynvml.nvmlDeviceGetHandleByUUID(name)
                return
            except Exception:
                continue

    def _close_nvml(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
        self._nvml = self._nvml_handle = None

    def _read_nvml(self) -> tuple[float | None, int | None]:
        """Return (utilisation %, memory used in bytes); None for what NVML cannot tell (MIG
        slices, for one, report no utilisation)."""
        if self._nvml_handle is None:
            return None, None
        util: float | None
        used: int | None
        try:
            util = float(self._nvml.nvmlDeviceGetUtilizationRates(self._nvml_handle).gpu)
        except Exception:
            util = None
        try:
            used = int(self._nvml.nvmlDeviceGetMemoryInfo(self._nvml_handle).used)
        except Exception:
            used = None
        return util, used

    def _summarise(self, t_end: float, gpu_peak: int | None) -> ProfileStats:
        samples = self._samples
        first = self._steady_index or 0
        steady = samples[first:]
        span = steady[-1].t - steady[0].t
        cpu_avg = 100.0 * (steady[-1].cpu_s - steady[0].cpu_s) / span if span > 0 else 0.0
        utils = [s.gpu_util for s in samples if s.gpu_util is not None]
        steady_utils = [s.gpu_util for s in steady if s.gpu_util is not None]
        used = [s.gpu_mem_used for s in samples if s.gpu_mem_used is not None]
        return ProfileStats(
            wall_s=t_end - self._t0,
            steady_wall_s=None if self._steady_index is None else t_end - steady[0].t,
            cpu_percent_avg=cpu_avg,
            cpu_percent_peak=max(cpu_avg, *self._cpu_rates()),
            cpu_percent_avg_per_core=cpu_avg / (psutil.cpu_count() or 1),
            rss_peak_bytes=max(s.rss for s in samples),
            rss_avg_bytes=round(sum(s.rss for s in steady) / len(steady)),
            gpu_util_avg=sum(steady_utils) / len(steady_utils) if steady_utils else None,
            gpu_util_peak=max(utils) if utils else None,
            gpu_mem_peak_bytes=gpu_peak,
            gpu_mem_used_peak_bytes=max(used) if used else None,
            n_samples=len(samples),
        )

    def _cpu_rates(self) -> list[float]:
        """CPU % over windows of at least half an interval.

        CPU time advances in scheduler ticks (10 ms on Linux), so a window of a few milliseconds
        (the stop sample right after a background one) would read 0 % or several hundred; such a
        short tail is merged into the window before it.
        """
        samples, rates = self._samples, []
        start = prev_start = 0
        for i in range(1, len(samples)):
            if samples[i].t - samples[start].t >= self.interval / 2:
                rates.append(self._rate(start, i))
                prev_start, start = start, i
        last = len(samples) - 1
        if start != last:
            if rates:
                rates[-1] = self._rate(prev_start, last)
            else:
                rates.append(self._rate(0, last))
        return rates

    def _rate(self, i: int, j: int) -> float:
        a, b = self._samples[i], self._samples[j]
        return 100.0 * (b.cpu_s - a.cpu_s) / (b.t - a.t) if b.t > a.t else 0.0


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so a timer stops at the
    end of the work and not at its launch; a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steady(
    fn: Callable[[], object],
    *,
    warmup: int,
    repeats: int,
    sync: Callable[[], object] | None = None,
) -> list[float]:
    """Time ``repeats`` calls of ``fn`` after ``warmup`` untimed ones.

    Warm-up calls absorb one-off costs (allocator growth, kernel selection, compilation) that would
    otherwise land in the first timing. ``sync`` (for instance :func:`torch.cuda.synchronize`) is
    called before each clock read so asynchronous GPU work is counted in the call that queued it.
    Benchmarks report the median, which ignores the occasional stall.

    Returns
    -------
    list[float]
        Seconds per timed call, in call order.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
    return times
