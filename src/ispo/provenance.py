"""What every output records about how it was made: versions, device, CPU, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from ispo.hardware import cpu_summary, has_bf16_matrix_units, this_cpu
from ispo.peak import PeakMode, cpu_peaks

__all__ = ["cpu_info", "device_name", "git_commit", "h5ad_safe", "versions"]


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "absent"


def versions() -> dict[str, str]:
    return {
        "ispo": _version("ispo"),
        "python": platform.python_version(),
        **{p: _version(p) for p in ("torch", "transformers", "anndata", "numpy")},
    }


def cpu_info(peak: PeakMode | str = PeakMode.AUTO) -> dict[str, Any]:
    """This CPU as a JSON-ready dict for results' metadata, with the peak of each dtype that
    MFU would use (``peak``: see :class:`ispo.peak.PeakMode`; never measured here): its TFLOP/s
    (``peak_tflops``) and what it is (``peaks``: source and how)."""
    cpu = this_cpu()
    peaks = cpu_peaks(peak)
    return {
        **asdict(cpu),
        "bf16_matrix_units": has_bf16_matrix_units(cpu),
        "peak_tflops": {k: None if p.flops is None else p.flops / 1e12 for k, p in peaks.items()},
        "peaks": {k: p.to_dict() for k, p in peaks.items()},
    }


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or ``cpu (MODEL, N cores, torch ISA ..., flags, N threads)``: CPUs differ
    more than methods do (bf16 units, AVX-512), so a CPU figure names its CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({cpu_summary()}, {torch.get_num_threads()} threads)"


def git_commit() -> str:
    """The commit of the ispo checkout in use, ``+dirty`` when tracked files differ from it.

    ``ISPO_GIT_COMMIT`` names it where the code was copied without its ``.git`` (a GPU
    machine); 'unknown' for an installed wheel.
    """
    if os.environ.get("ISPO_GIT_COMMIT"):
        return os.environ["ISPO_GIT_COMMIT"]
    here = Path(__file__).parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=here,
        ).stdout.strip()
        if not head:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=here,
        ).stdout
        return head + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def h5ad_safe(d: dict) -> dict:
    """A copy of ``d`` that h5ad can store (no None values)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = h5ad_safe(v)
        elif v is not None:
            out[k] = v
    return out


def machine_was_busy(meta: dict) -> bool:
    """Whether a result's run shared its CPUs: the 1-minute load average (``meta
    ["load_average"]``, at start and end) above the CPU count. Its absolute figures are then
    pessimistic; ratios measured in the same run hold better."""
    load = meta.get("load_average") or {}
    if load.get("start") is None:
        return False
    return max(load["start"], load.get("end") or 0.0) > (meta.get("cpu_count") or 1)
