"""Profiler and timed_steady: figures are present, plausible and the sampler never leaks.

Timing bounds are one-sided or generous: the suite runs on loaded 2-core machines, where a block
can take several times its nominal duration and a busy loop gets a fraction of a core. The
claims are checked as comparisons made within one test (busy vs idle), not as absolute figures.
"""

import dataclasses
import json
import threading
import time

import psutil
import pytest
import torch

from ispo.runtime.profiler import Profiler, ProfileStats, timed_steady


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _sampler_alive() -> bool:
    return any(t.name == "ispo-profiler" for t in threading.enumerate())


def test_busy_loop_figures() -> None:
    with Profiler(device="cpu", interval=0.05) as prof:
        assert _sampler_alive()
        _busy(0.3)
    s = prof.stats
    assert isinstance(s, ProfileStats) and prof.result() is s
    assert 0.3 <= s.wall_s < 10  # never shorter than the block; no tight upper bound
    assert s.cpu_percent_avg > 0
    assert s.cpu_percent_peak >= s.cpu_percent_avg
    assert s.cpu_percent_avg_per_core == pytest.approx(s.cpu_percent_avg / psutil.cpu_count())
    assert 0 < s.rss_avg_bytes <= s.rss_peak_bytes
    assert s.n_samples >= 3
    assert s.steady_wall_s is None
    assert not _sampler_alive()


def test_gpu_fields_none_on_cpu() -> None:
    with Profiler(device=torch.device("cpu")) as prof:
        _busy(0.01)
    s = prof.stats
    assert s.gpu_util_avg is None and s.gpu_util_peak is None
    assert s.gpu_mem_peak_bytes is None and s.gpu_mem_used_peak_bytes is None


def test_sleep_wall_time_and_short_block() -> None:
    with Profiler(interval=0.05) as prof:
        time.sleep(0.2)
    assert 0.2 <= prof.stats.wall_s < 10
    assert prof.stats.cpu_percent_avg < 50  # own CPU time while asleep: load elsewhere adds none

    with Profiler(interval=10.0) as prof:  # shorter than one interval: start and stop samples
        pass
    assert prof.stats.n_samples == 2
    assert prof.stats.rss_peak_bytes > 0


def test_mark_steady_averages_over_steady_part() -> None:
    """After mark_steady the averages cover the busy part only: the same busy block profiled
    whole, idle warm-up included, averages less (compared in one test, so load cancels)."""
    with Profiler(interval=0.05) as prof:
        time.sleep(0.3)
        prof.mark_steady()
        _busy(0.3)
    s = prof.stats
    assert s.steady_wall_s is not None
    assert 0.3 <= s.steady_wall_s < s.wall_s
    with Profiler(interval=0.05) as whole:
        time.sleep(0.3)
        _busy(0.3)
    assert s.cpu_percent_avg > whole.stats.cpu_percent_avg


def test_exception_inside_block_stops_sampler() -> None:
    with pytest.raises(KeyError, match="boom"), Profiler(interval=0.01) as prof:
        time.sleep(0.03)
        raise KeyError("boom")
    assert not _sampler_alive()
    assert prof.stats.wall_s > 0


def test_misuse_raises() -> None:
    prof = Profiler()
    with pytest.raises(RuntimeError, match=r"mark_steady\(\) must be called inside"):
        prof.mark_steady()
    with pytest.raises(
        RuntimeError, match=r"profile stats are available once the `with Profiler\(\)` block ends"
    ):
        _ = prof.stats
    with pytest.raises(ValueError, match="interval must be positive, got 0"):
        Profiler(interval=0)


def test_to_dict_is_json_and_stats_frozen() -> None:
    with Profiler() as prof:
        _busy(0.01)
    d = prof.stats.to_dict()
    json.dumps(d)
    assert d["rss_peak_mib"] == d["rss_peak_bytes"] / 2**20
    assert d["gpu_mem_peak_mib"] is None
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'wall_s'"):
        prof.stats.wall_s = 0.0  # type: ignore[misc]


def test_timed_steady_counts_and_times() -> None:
    calls: list[str] = []
    times = timed_steady(
        lambda: (calls.append("fn"), time.sleep(0.01)),
        warmup=2,
        repeats=3,
        sync=lambda: calls.append("sync"),
    )
    assert len(times) == 3 and all(t >= 0.01 for t in times)
    assert calls[:2] == ["fn", "fn"]
    assert calls[2:] == ["sync", "fn", "sync"] * 3
    assert len(timed_steady(lambda: None, warmup=0, repeats=1)) == 1
    with pytest.raises(ValueError, match=r"need warmup >= 0 and repeats >= 1, got 0 and 0"):
        timed_steady(lambda: None, warmup=0, repeats=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_figures() -> None:
    with Profiler(device="cuda", interval=0.05) as prof:
        x = torch.randn(4096, 4096, device="cuda")
        for _ in range(20):
            x = x @ x / 64
    s = prof.stats
    assert s.gpu_mem_peak_bytes is not None and s.gpu_mem_peak_bytes >= 4096 * 4096 * 4
    assert s.gpu_mem_used_peak_bytes is not None and s.gpu_mem_used_peak_bytes > 0
    assert s.gpu_util_peak is not None
