"""Writing outputs so that a failed or interrupted run never leaves a half-written file."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ispo.errors import IspoError


def check_output(path: str | Path, overwrite: bool, suffixes: tuple[str, ...] = ()) -> Path:
    """Refuse an existing output (unless ``overwrite``), a name whose extension is not one of
    ``suffixes`` (when given: the format written), or an unwritable place, before any work.

    Missing parent folders are fine: :func:`replacing` creates them when the output is written
    (every command alike, so a fresh folder works as ``runs/x`` does for the benchmark).
    """
    out = check_suffix(path, suffixes)
    if out.exists() and not overwrite:
        raise IspoError(f"output {out} already exists: choose another path or pass --overwrite")
    folder = next(p for p in [out.absolute().parent, *out.absolute().parents] if p.exists())
    if not folder.is_dir():
        raise IspoError(f"output folder {folder} is a file, not a folder: choose another --out")
    if not os.access(folder, os.W_OK):
        raise IspoError(f"output folder {folder} is not writable: choose another --out")
    return out


def check_suffix(path: str | Path, suffixes: tuple[str, ...]) -> Path:
    """Refuse an output name whose extension is not one of ``suffixes`` (the formats the
    command writes): ``--out e7.csv`` must not get Parquet inside. No ``suffixes``: any name."""
    out = Path(path)
    if suffixes and out.suffix.lower() not in suffixes:
        raise IspoError(
            f"output {out} does not end in {' or '.join(suffixes)}: this command writes "
            f"{'that format' if len(suffixes) == 1 else 'those formats'}, so name the file "
            f"{out.stem}{suffixes[0]}"
        )
    return out


@contextmanager
def replacing(path: str | Path, *, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that is renamed onto it if the block succeeds
    and removed if it fails: a reader never sees half an output. Whether ``path`` may be
    replaced is the caller's decision (:func:`check_output`); ``folder``: an existing folder
    ``path`` is removed first (a result folder written anew). Missing parent folders are
    created."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
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
