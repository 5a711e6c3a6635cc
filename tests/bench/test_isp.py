"""`ispo bench-isp`: ispo's delete-all against the original loop on the same cells: the values
agree, the counts and FLOPs are those of the cells, and the files are written."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ispo
from _scaleout import small_adata, tiny_checkpoint
from ispo.bench.flops import encoder_flops
from ispo.bench.isp import isp_speed
from ispo.cli.main import main
from ispo.hardware import this_cpu


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("isp") / "ckpt")


def test_isp_speed_rows(ckpt, monkeypatch):
    monkeypatch.setenv("ISPO_CPU_PEAK_FLOPS", "1e12")
    model = ispo.load_model(ckpt, vocab=ispo.demo_vocab(), device="cpu")
    adata = small_adata(5)
    res = isp_speed(adata, model, n_cells=3, precisions=("fp32",))
    ours, orig = res["rows"]
    cells = ispo.tokenize(adata, model.vocab).subset(np.arange(3))
    assert res["n_cells"] == 3
    assert ours["n_perturbations"] == orig["n_perturbations"] == int(cells.lengths.sum())
    assert ours["max_abs_diff_vs_original"] < 1e-5
    shape = dict(n_layers=model.layers_for(-1), hidden=16, intermediate=model.config.intermediate)
    need = encoder_flops(cells.lengths, **shape) + encoder_flops(
        np.repeat(cells.lengths - 1, cells.lengths), **shape
    )
    for r in (ours, orig):
        assert r["model_tflop"] == pytest.approx(need / 1e12)
        assert r["mfu"] == pytest.approx(need / r["seconds"] / 1e12)
        assert (r["peak_tflops"], r["peak_source"]) == (1.0, "ISPO_CPU_PEAK_FLOPS")
    assert res["mfu_peaks"]["fp32"]["how"] == "set by the user (ISPO_CPU_PEAK_FLOPS=1e12)"
    assert orig["speedup_vs_original"] == 1.0


def test_bench_isp_cli_files(ckpt, tmp_path, capsys):
    data = tmp_path / "d.h5ad"
    small_adata(4).write_h5ad(data)
    out = tmp_path / "isp"
    main(
        [
            "-q",
            "bench-isp",
            "--data",
            str(data),
            "--vocab",
            "demo",
            "--model",
            str(ckpt),
            "--n-cells",
            "2",
            "--out",
            str(out),
        ]
    )
    res = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in res["rows"]][-1].startswith("original loop")
    # bench-isp measures this CPU's fp32 peak first, and says so
    ours = res["rows"][0]
    assert ours["peak_source"] == res["mfu_peaks"]["fp32"]["source"] == "measured"
    assert ours["mfu"] == pytest.approx(ours["tflop_per_s"] / ours["peak_tflops"])
    assert res["load_average"]["start"] is not None and res["cpu"]["model"] == this_cpu().model
    table = (out / "results.md").read_text()
    assert "| MFU |" in table and "perturbations/s" in capsys.readouterr().out
    assert "MFU against: fp32 " in table and ", measured (best of " in table
