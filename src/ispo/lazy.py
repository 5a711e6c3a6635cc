"""Public names a package imports on first use (PEP 562), so that ``ispo --help`` and
``import ispo`` do not pay for torch, scikit-learn or matplotlib until a name is asked for.

One implementation for the subpackages that export this way (``ispo.training``,
``ispo.evaluation``, ``ispo.bench``); the top-level ``ispo`` adds its subpackages on top.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: each name in ``exports`` comes from the
    module it maps to when first asked for, then stays a plain attribute of the package."""
    namespace = vars(sys.modules[package])

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(exports[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *exports])

    return __getattr__, __dir__
