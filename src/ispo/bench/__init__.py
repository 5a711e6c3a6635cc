"""Benchmark tooling: profiling and FLOP accounting shared by every run, the methods registry,
the benchmark runner and its reports.

Attributes are imported lazily so that ``ispo --help`` does not pay for torch.
"""

from __future__ import annotations

from ispo.lazy import lazy_exports

_EXPORTS = {
    "Profiler": "ispo.runtime.profiler",
    "ProfileStats": "ispo.runtime.profiler",
    "MethodSpec": "ispo.bench.methods",
    "register": "ispo.bench.methods",
    "resolve_methods": "ispo.bench.methods",
    "BenchConfig": "ispo.bench.config",
    "BenchResult": "ispo.bench.rows",
    "run_benchmark": "ispo.bench.runner",
    "write_results": "ispo.bench.tables",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
