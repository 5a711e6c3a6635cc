"""The device scripts (benchmarks/gpu/) stay runnable: CI has no GPU, so their CPU dry run is
checked here (parity part of check.py on a few real cells; run.sh parses)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

from support import shared_path

GPU = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"


def test_run_script_parses() -> None:
    for script in ("run.sh", "prepare.sh"):
        subprocess.run(["bash", "-n", str(GPU / script)], check=True)


def test_check_script_parity_on_cpu(monkeypatch, capsys) -> None:
    data = shared_path("kang2018_pbmc_ifnb_2000.h5ad")  # skips when ../shared is absent
    vocab = shared_path("geneformer-v1")
    spec = importlib.util.spec_from_file_location("gpu_check", GPU / "check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    monkeypatch.setenv("DEV", "cpu")
    assert check.main(str(data), str(vocab), 3) == 0
    out = capsys.readouterr().out
    assert out.count("ok   fast") == 6 and "FAIL" not in out
