"""Writing outputs so that a failed or interrupted run never leaves a half-written file."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ispo.errors import IspoError


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output (unless ``overwrite``) or an unwritable folder, before any work."""
    out = Path(path)
    if out.exists() and not overwrite:
        raise IspoError(f"output {out} already exists: choose another path or pass --overwrite")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise IspoError(f"output folder {parent} is a file, not a folder: choose another --out")
    if not parent.is_dir():
        raise IspoError(f"output folder {parent} does not exist: create it first")
    if not os.access(parent, os.W_OK):
        raise IspoError(f"output folder {parent} is not writable: choose another --out")
    return out


@contextmanager
def replacing(path: str | Path, *, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that is renamed onto it if the block succeeds
    and removed if it fails: a reader never sees half an output. Whether ``path`` may be
    replaced is the caller's decision (:func:`check_output`); ``folder``: an existing folder
    ``path`` is removed first (a result folder written anew)."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        yield tmp
        if folder and out.is_dir():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    with replacing(check_output(path, overwrite), folder=overwrite) as tmp:
        yield tmp


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it, renamed into place: a
    reader never sees half a file, and an existing file is replaced whole."""
    with replacing(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
    return Path(path)
