"""The ``ispo`` command line (console entry point ``ispo.cli.main:main``): importing this module
registers every command on :data:`ispo.cli.app.app`, in the order ``ispo --help`` lists them.

The app and the entry point live in :mod:`ispo.cli.app`, the shared option types in
:mod:`ispo.cli.options`, each command in its own module (they import the app, never this
module, so nothing imports in a circle).
"""

from __future__ import annotations

from importlib import import_module

from ispo.cli.app import app, main
from ispo.cli.bench import register as _register_bench

__all__ = ["app", "main"]

for _name in ("embed", "demo", "perturb"):
    import_module(f"ispo.cli.{_name}")  # each registers its command on app
# benchmark, and the reference project's `baseline` / `optimized` forms (ispo.cli.bench)
_register_bench(app)
for _name in ("finetune", "evaluate", "tune", "report", "stats", "isp"):
    import_module(f"ispo.cli.{_name}")
