"""Benchmark tooling: profiling and FLOP accounting shared by every run, the methods registry,
the benchmark runner and its reports.

Attributes are imported lazily so that ``ispo --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ispo.bench' has no attribute {name!r}")
