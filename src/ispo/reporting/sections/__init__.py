"""The sections of ``ispo report``, one module per kind of result.

Each module has ``MARKERS`` (file names that, passed alone, stand for their folder), ``finds``
(the results of its kind in a folder) and ``section`` (a result's :class:`Section`: the name of
its Markdown template under ``ispo/reporting/templates/`` and the plain data it shows). Adding a
kind is one template, one such module and one line in :data:`ispo.reporting.report.KINDS`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ispo.errors import IspoError

RANDOM_NOTE = (
    "RANDOM WEIGHTS: {what} was made with a model with seeded random weights; its "
    "speed figures are real, but anything biological (classification, clustering, "
    "perturbation hits) means nothing"
)
SCRATCH_NOTE = (
    "FROM RANDOM WEIGHTS: {what} started from seeded random weights (no pretraining) and "
    "learned only from its own training cells: its scores are what those cells taught it, "
    "not what a foundation model knows"
)
SYNTHETIC_NOTE = "SYNTHETIC DATA: {what} ran on ispo's built-in synthetic demo data, not biology"
TOP_HITS = 20


@dataclass
class Section:
    """One result's part of the report: its template, the data it shows, and whether it was
    made with random weights (the report's top then warns once for all)."""

    template: str
    context: dict[str, Any] = field(default_factory=dict)
    random_init: bool = False


@dataclass(frozen=True)
class Image:
    """A figure of the report: its path relative to the report, and what it shows."""

    path: str
    alt: str


def read_json(path: Path) -> Any:
    """A result's JSON file, or one line saying it is unreadable and what to do."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IspoError(
            f"cannot read {path} as JSON ({type(exc).__name__}): rerun the command that wrote it"
        ) from exc


def label(path: Path) -> str:
    """The short name a section heading gives a result."""
    return path.name or str(path)
