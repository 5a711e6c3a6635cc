"""SIGINT (Ctrl-C) and SIGTERM (a scheduler) stop ``ispo embed`` and ``ispo perturb`` with one
line and exit 130 / 143, and ``--resume`` then gives the rows of an uninterrupted run.

A real ``python -m ispo`` child is held after ``HANG_AFTER`` recorded shards by
``ISPO_FAULT=hang_after_shard:N`` (:mod:`ispo.faults`), so the signal lands mid-run however
loaded the machine is. SIGINT goes to the child's whole process group, as a terminal's Ctrl-C
does (embed's tokenizing worker process gets it too and must stop without a traceback);
SIGTERM goes to the main process only, as a workflow manager's does. The uninterrupted
references run in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from _scaleout import REPO, env, ispo_cmd, tiny_checkpoint, write_small
from ispo import faults
from ispo.cli.main import main

N_CELLS = 12
HANG_AFTER = 3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    return {
        "ckpt": tiny_checkpoint(root / "ckpt"),
        "data": write_small(root / "d.h5ad", N_CELLS, seed=5),
    }


def _args(command: str, files) -> list[str]:
    unit = ["--shard-cells", "1"] if command == "perturb" else ["--chunk-cells", "1"]
    extra = ["--workers", "1"] if command == "embed" else []  # a worker process to stop too
    return [str(files["data"]), "--vocab", "demo", "--model", str(files["ckpt"])] + unit + extra


def _recorded(parts: Path) -> int:
    return sum(len(json.loads(m.read_text())["done"]) for m in parts.glob("manifest*.json"))


def _interrupt(cmd: list[str], parts: Path, sig: signal.Signals) -> subprocess.CompletedProcess:
    """Run ``cmd``, send ``sig`` once ``HANG_AFTER`` shards are recorded; its outcome."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env(), faults.ENV: f"hang_after_shard:{HANG_AFTER}"},
        cwd=REPO,
        start_new_session=True,  # its own process group, as a shell job has
    )
    try:
        deadline = time.monotonic() + 120
        while not parts.exists() or _recorded(parts) < HANG_AFTER:
            if proc.poll() is not None:
                pytest.fail(f"run ended before the signal: {proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{HANG_AFTER} shards not recorded within 120 s")
            time.sleep(0.05)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # Ctrl-C: the terminal signals the whole group
        else:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _same_result(command: str, out: Path, ref: Path) -> None:
    if command == "perturb":
        a, b = pd.read_parquet(out), pd.read_parquet(ref)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        assert a["cell_id"].nunique() == N_CELLS
    else:
        a, b = ad.read_h5ad(out), ad.read_h5ad(ref)
        np.testing.assert_array_equal(a.obsm["X_geneformer"], b.obsm["X_geneformer"])
        assert a.obs["geneformer_embedded"].all()


@pytest.mark.parametrize(
    ("command", "sig"),
    [
        ("perturb", signal.SIGINT),
        ("perturb", signal.SIGTERM),
        ("embed", signal.SIGINT),
        ("embed", signal.SIGTERM),
    ],
)
def test_signal_stops_with_one_line_and_resume_completes(files, tmp_path, command, sig):
    suffix = ".parquet" if command == "perturb" else ".h5ad"
    out = tmp_path / f"res{suffix}"
    parts = out.with_name(out.name + ".parts")
    args = [*_args(command, files), "--device", "cpu", "--out", str(out)]
    got = _interrupt(ispo_cmd("-q", command, *args), parts, sig)
    assert got.returncode == 128 + sig, got.stderr[-2000:]
    unit = "shards" if command == "perturb" else "chunks"
    lines = [ln for ln in got.stderr.splitlines() if ln.strip()]
    assert lines[-1] == (
        f"interrupted ({sig.name}) after {HANG_AFTER} of {N_CELLS} {unit}; "
        "rerun the same command with --resume"
    )
    assert "Traceback" not in got.stderr and "ForkPoolWorker" not in got.stderr
    assert not out.exists() and _recorded(parts) == HANG_AFTER
    main(["-q", command, *args, "--resume"])
    ref = tmp_path / f"ref{suffix}"
    main(["-q", command, *args[:-1], str(ref)])
    _same_result(command, out, ref)
    assert not parts.exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_handlers_turn_a_signal_into_interrupted_and_restore(sig):
    """In-process: the signal becomes Interrupted (exit 128 + signal), what a loop noted is in
    its line, a command without --resume is not told to resume, and the old handler is back."""
    from ispo.runtime import interrupt

    before = signal.getsignal(sig)
    with (
        pytest.raises(interrupt.Interrupted) as info,
        interrupt.handlers(),
        interrupt.noting(lambda: "2 of 5 shards"),
    ):
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler raises before this ends
    exc = info.value
    assert exc.exit_code == 128 + sig and interrupt.stopping.is_set()
    assert exc.message() == (
        f"interrupted ({sig.name}) after 2 of 5 shards; rerun the same command with --resume"
    )
    assert exc.message(resumable=False) == f"interrupted ({sig.name}) after 2 of 5 shards"
    assert signal.getsignal(sig) is before
