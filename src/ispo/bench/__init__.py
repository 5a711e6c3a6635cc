"""Benchmark tooling: profiling and FLOP accounting shared by every run."""

from ispo.bench.profiler import Profiler, ProfileStats

__all__ = ["ProfileStats", "Profiler"]
