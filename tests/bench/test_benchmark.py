"""The benchmark: every method gives a complete row on a tiny model, fp32 methods agree with the
baseline, int8 really runs in int8, nothing is faked, results files parse, the CLI forms run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import ispo
from hf_reference import embed_reference, half_error, load_reference
from ispo.bench import guards
from ispo.bench.config import BenchConfig
from ispo.bench.measure import run_method
from ispo.bench.methods import REGISTRY, prepare, resolve_methods
from ispo.bench.rows import ROW_KEYS
from ispo.bench.runner import run_benchmark
from ispo.bench.tables import read_results, to_markdown, write_results
from ispo.cli.main import app
from ispo.errors import IspoError
from ispo.model.int8 import Int8Linear, count_float_linears, count_int8_linears

N_CELLS = 4
ALL_BUT_COMPILE = "baseline,batching,fp16,bf16,int8,fast,fast-bf16,fast-fp16,fast-int8"
FP32 = ("baseline", "batching-2", "batching-4", "fast")


def _save_tiny(path: Path) -> Path:
    """A seeded BertForMaskedLM with the demo vocabulary's size (hidden 16, 2 layers)."""
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=ispo.demo_vocab().size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=2048,
        hidden_act="relu",
        pad_token_id=0,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    BertForMaskedLM(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("tiny_ckpt"))


@pytest.fixture(scope="module")
def small_adata():
    """Demo cells restricted to 1,000 genes: ~90 tokens each, so the MLM head stays cheap."""
    return ispo.demo_adata(10)[:, :1000].copy()


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory, small_adata) -> Path:
    path = tmp_path_factory.mktemp("data") / "small.h5ad"
    small_adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tiny_ckpt):
    return ispo.load_model(tiny_ckpt, vocab=ispo.demo_vocab(), device="cpu")


@pytest.fixture(scope="module")
def result(tiny_model, small_adata):
    # a second timed pass only where a pass is cheap (the median logic, without the cost)
    config = BenchConfig(
        methods=ALL_BUT_COMPILE,
        batch_sizes=(2, 4),
        ref_batch_size=4,
        repeats=2,
        repeat_budget_s=0.2,
        max_slowdown=None,
    )  # tiny model: timing noise must not skip a row
    return run_benchmark(small_adata, tiny_model, ispo.demo_vocab(), config, n_cells=N_CELLS)


def test_every_method_gives_a_complete_row(result) -> None:
    names = [r["method"] for r in result.rows]
    assert names == [
        "baseline",
        "batching-2",
        "batching-4",
        "fp16",
        "bf16",
        "int8",
        "fast",
        "fast-bf16",
        "fast-fp16",
        "fast-int8",
        "tokenize",
    ]
    for r in result.rows:
        assert list(r) == ROW_KEYS
        assert r["status"] == "ok", (r["method"], r["reason"])
        for key in (
            "time_s",
            "cells_per_s",
            "tokens_per_s",
            "cpu_percent_avg",
            "cpu_percent_peak",
            "rss_peak_mib",
            "wall_s",
        ):
            assert r[key] is not None and r[key] > 0, (r["method"], key)
        if r["method"] == "tokenize":
            continue
        assert r["n_cells"] == N_CELLS
        assert r["cells_per_s"] == pytest.approx(N_CELLS / r["time_s"])
        for key in (
            "speedup",
            "achieved_tflops",
            "model_flops",
            "executed_flops",
            "cos_min",
            "cos_mean",
            "setup_s",
            "warmup_s",
        ):
            assert r[key] is not None, (r["method"], key)
        assert r["gpu_util_avg"] is None and r["gpu_mem_peak_mib"] is None  # CPU: not faked
        if r["peak_tflops"] is None:  # a CPU whose peak is unknown: no MFU, never a guessed one
            assert r["mfu"] is None
        else:  # MFU against the peak the row names
            assert r["mfu"] == pytest.approx(r["achieved_tflops"] / r["peak_tflops"])
        # a benchmark measures the CPU's peak first (ispo.peak) and every row says which it used
        dtype = "int8" if "int8" in r["method"] else r["precision"]
        expected = "nominal" if dtype == "int8" else "measured"
        assert r["peak_source"] == expected == result.meta["mfu_peaks"][dtype]["source"]
        assert r["peak_tflops"] * 1e12 == result.meta["mfu_peaks"][dtype]["flops"]
        assert 0.0 <= r["pad_fraction"] < 1.0
        assert result.embeddings[r["method"]].shape == (N_CELLS, 16)
    assert result.row("baseline")["speedup"] == pytest.approx(1.0)
    # the reference path runs every layer and the MLM head; the fast path only what it needs
    assert result.row("baseline")["executed_flops"] > result.row("fast")["executed_flops"]
    assert result.row("fast")["executed_flops"] == result.row("fast")["model_flops"]


def test_fp32_methods_match_the_baseline(result) -> None:
    """The benchmark's own accuracy columns (against its baseline method)."""
    for name in FP32:
        r = result.row(name)
        assert r["cos_min"] >= 0.9999, (name, r["cos_min"])
        assert r["cos_min"] <= r["cos_mean"] <= 1.0 + 1e-9
    for name in ("fp16", "bf16", "int8", "fast-bf16", "fast-fp16", "fast-int8"):
        assert result.row(name)["cos_min"] > 0.99, name


# int8 (dynamic quantization of weights and activations: a relative step of 2^-7 per tensor,
# several per layer) is held to a cosine: a vector error of a few steps e gives a gap of about
# e^2 / 2 ~ 1e-4; measured 4e-5 here, allowed 1e-3.
INT8_COS_GAP = 1e-3


def test_every_method_matches_transformers(result, tiny_ckpt, small_adata) -> None:
    """Oracle: ``BertForMaskedLM.from_pretrained`` of the checkpoint (tests/hf_reference.py),
    not the benchmark's baseline. fp32 within 2e-5; bf16/fp16 within the half-precision
    tolerance of the long-cell tests (a few steps of the format per layer run); int8 by cosine."""
    hf = load_reference(tiny_ckpt)
    lists = ispo.tokenize(small_adata, ispo.demo_vocab()).to_lists()[:N_CELLS]
    ref = embed_reference(hf, lists, -1, "mean", has_cls=False).numpy()
    scale = float(np.abs(ref).max())
    for r in result.rows[:-1]:  # the last row is the tokenizer's
        got, name = result.embeddings[r["method"]], r["method"]
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        if "int8" in name:
            assert 1 - cos.min() <= INT8_COS_GAP, (name, cos.min())
            continue
        prec = r["precision"]
        atol = 2e-5 if prec == "fp32" else half_error(prec, hf.config.num_hidden_layers) * scale
        assert np.abs(got - ref).max() <= atol, (name, np.abs(got - ref).max(), atol)


def test_int8_rows_really_use_int8_linear_layers(tiny_model, result) -> None:
    n_run = tiny_model.layers_for(-1)
    prep = prepare(REGISTRY["int8"], tiny_model, n_run)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    quantized = [m for m in prep.net.modules() if isinstance(m, DynamicQuantizedLinear)]
    # 2 layers x (q, k, v, attention out, intermediate, output) + MLM head dense + decoder
    assert len(quantized) == 14
    assert all(m.weight().dtype == torch.qint8 for m in quantized)
    assert count_float_linears(prep.net) == 0
    assert count_float_linears(tiny_model.hf_model()) == 14  # the reference stays fp32
    assert result.row("int8")["int8_linear_layers"] == 14
    assert result.row("int8")["precision"] == "int8"
    fast = prepare(REGISTRY["fast-int8"], tiny_model, n_run)
    assert count_int8_linears(fast.net) == 4 and count_float_linears(fast.net) == 0
    assert "quantize_dynamic" in result.row("int8")["backend"]


def test_int8_linear_kernel_matches_float() -> None:
    """The CUDA backend's module, checked on CPU where torch._int_mm also runs."""
    a = torch.ones(32, 32, dtype=torch.int8)
    try:
        torch._int_mm(a, a.t())
    except Exception:
        pytest.skip("torch._int_mm has no CPU kernel in this build")
    torch.manual_seed(0)
    for n_in, n_out, shape in [(20, 13, (3, 5)), (64, 48, (40,)), (16, 25426 % 64, (2,))]:
        lin = nn.Linear(n_in, n_out)
        q = Int8Linear(lin)
        x = torch.randn(*shape, n_in)
        with torch.no_grad():
            ref, got = lin(x), q(x)
        assert got.shape == ref.shape
        cos = nn.functional.cosine_similarity(got.reshape(-1, n_out), ref.reshape(-1, n_out))
        assert cos.min() > 0.999
    assert q.w_int8.dtype == torch.int8


def test_missing_int8_backend_is_reported_not_faked(tiny_model, small_adata, monkeypatch) -> None:
    monkeypatch.setenv("ISPO_FAULT", "no_int8:1")  # the documented injection point
    cells = ispo.tokenize(small_adata[:2], ispo.demo_vocab())
    spec = resolve_methods("int8", ref_batch_size=2)[1]
    row, emb = run_method(spec, tiny_model, cells, BenchConfig(repeats=1))
    assert row["status"] == "unavailable" and "no int8 backend" in row["reason"]
    assert emb is None and row["time_s"] is None and row["cells_per_s"] is None


def test_failed_compile_is_reported_not_faked(tiny_model, small_adata, monkeypatch) -> None:
    def broken_compile(module, **kw):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler (test)")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    cells = ispo.tokenize(small_adata[:2], ispo.demo_vocab())
    row, emb = run_method(REGISTRY["fast+compile"], tiny_model, cells, BenchConfig(repeats=1))
    assert row["status"] == "unavailable"
    assert "torch.compile failed" in row["reason"] and "no C++ compiler" in row["reason"]
    assert emb is None and row["cells_per_s"] is None


def test_memory_guard_skips_with_the_estimate(tiny_model, small_adata) -> None:
    config = BenchConfig(methods="batching-4,fast", repeats=1, memory_fraction=1e-9)
    res = run_benchmark(small_adata[:3], tiny_model, ispo.demo_vocab(), config)
    for name in ("baseline", "batching-4"):
        r = res.row(name)
        assert r["status"] == "skipped" and "GiB" in r["reason"] and r["est_batch_mem_mib"] > 0
    fast = res.row("fast")
    assert fast["status"] == "ok" and fast["speedup"] is None and fast["cos_min"] is None


def test_time_guard_skips_slow_methods_but_never_the_baseline(
    tiny_model, small_adata, monkeypatch
) -> None:
    monkeypatch.setattr(guards, "GUARD_FLOOR_S", 0.0)
    config = BenchConfig(methods="bf16,fast", repeats=1, max_slowdown=1e-9)
    res = run_benchmark(small_adata[:3], tiny_model, ispo.demo_vocab(), config)
    assert res.row("baseline")["status"] == "ok"
    for name in ("bf16", "fast"):
        r = res.row(name)
        assert r["status"] == "skipped" and "--max-slowdown" in r["reason"]
        assert r["warmup_s"] > 0 and r["cells_per_s"] is None
    # off: everything runs
    config = BenchConfig(methods="fast", repeats=1, max_slowdown=None)
    res = run_benchmark(small_adata[:3], tiny_model, ispo.demo_vocab(), config)
    assert res.row("fast")["status"] == "ok"


def test_resolve_methods() -> None:
    specs = resolve_methods("fast,batching,mixed_precision", batch_sizes=(8, 16), ref_batch_size=32)
    assert [s.name for s in specs] == [
        "baseline",
        "fast",
        "batching-8",
        "batching-16",
        "fp16",
        "bf16",
    ]
    assert specs[0].batch_size == 10
    assert specs[-1].batch_size == 32 and specs[-1].title() == "Mixed precision bf16 (bs=32)"
    assert [s.name for s in resolve_methods("int8,baseline,batching-3")] == [
        "baseline",
        "int8",
        "batching-3",
    ]
    assert "fast+compile" in [s.name for s in resolve_methods(None)]
    with pytest.raises(IspoError, match="unknown benchmark method"):
        resolve_methods("warp-drive")


def test_results_files_parse(result, tmp_path) -> None:
    files = write_results(result, tmp_path)
    names = {f.name for f in files}
    assert {
        "results.json",
        "results.csv",
        "results.md",
        "throughput.png",
        "speedup.png",
        "memory.png",
        "embeddings.npz",
    } <= names
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in data["rows"]] == [r["method"] for r in result.rows]
    meta = data["meta"]
    for key in ("device", "versions", "git_commit", "model", "data", "config", "created"):
        assert meta[key], key
    assert meta["model"]["architecture"]["hidden"] == 16
    with open(tmp_path / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(result.rows) and list(rows[0]) == ROW_KEYS
    assert float(rows[0]["speedup"]) == pytest.approx(1.0)
    md = (tmp_path / "results.md").read_text()
    assert "| Method | Time (s) | Cells/s" in md and meta["device"] in md
    assert "git commit" in md and "Tokenizer" in md
    from matplotlib.image import imread

    for png in ("throughput.png", "speedup.png", "memory.png"):
        img = imread(tmp_path / png)  # decodes, has a size, and something is drawn
        assert min(img.shape[:2]) >= 100 and len(np.unique(img.reshape(-1, img.shape[2]), 0)) > 10
    npz = np.load(tmp_path / "embeddings.npz")
    assert npz["fast"].shape == (N_CELLS, 16)
    again = read_results(tmp_path)  # the JSON holds everything the report needs
    assert [r["speedup"] for r in again.rows] == [r["speedup"] for r in result.rows]
    assert to_markdown(again) == md


# ----------------------------------------------------------------- command line


def _cli(args: list[str]):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    return res


def _common(tiny_ckpt: Path, small_h5ad: Path) -> list[str]:
    return ["--model", str(tiny_ckpt), "--data", str(small_h5ad), "--vocab", "demo"]


def test_cli_benchmark(tiny_ckpt, small_h5ad, tmp_path) -> None:
    out = tmp_path / "bench"
    res = _cli(
        [
            "benchmark",
            *_common(tiny_ckpt, small_h5ad),
            "--n-cells",
            "3",
            "--methods",
            "fast,batching",
            "--batch-sizes",
            "2",
            "--repeats",
            "1",
            "--out",
            str(out),
            "--no-save-embeddings",
        ]
    )
    assert "ispo benchmark" in res.output and "Speedup" in res.output  # the rich table
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["baseline", "fast", "batching-2", "tokenize"]
    assert not (out / "embeddings.npz").exists()
    again = CliRunner().invoke(
        app, ["benchmark", *_common(tiny_ckpt, small_h5ad), "--out", str(out)]
    )
    assert isinstance(again.exception, IspoError)  # results exist: no silent overwrite


@pytest.mark.parametrize(
    ("args", "method"),
    [
        (["optimized", "--method", "batching", "--batch_size", "2"], "batching-2"),
        (
            [
                "optimized",
                "--method",
                "mixed_precision",
                "--precision",
                "bf16",
                "--batch_size",
                "4",
            ],
            "bf16",
        ),
        (["optimized", "--method", "quantization", "--batch_size", "4"], "int8"),
    ],
)
def test_reference_command_forms(tiny_ckpt, small_h5ad, tmp_path, args, method) -> None:
    out = tmp_path / "out"
    _cli(
        [
            *args,
            "--num_perturbations",
            "3",
            *_common(tiny_ckpt, small_h5ad),
            "--output_dir",
            str(out),
        ]
    )
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["baseline", method, "tokenize"]
    assert all(r["status"] == "ok" for r in rows) and rows[0]["n_cells"] == 3
    if method != "batching-2":  # batch size 4 on 3 cells: one batch of all 3, said so
        assert rows[1]["label"].endswith("(bs=4→3)")


def test_baseline_form(tiny_ckpt, small_h5ad, tmp_path) -> None:
    out = tmp_path / "baseline"
    _cli(
        [
            "baseline",
            "--num_perturbations",
            "2",
            *_common(tiny_ckpt, small_h5ad),
            "--output_dir",
            str(out),
        ]
    )
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["baseline", "tokenize"]
    assert rows[0]["n_cells"] == 2 and rows[0]["batching"].startswith("10 cells")


def test_python_m_ispo_has_the_reference_commands() -> None:
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "ispo", "optimized", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert proc.returncode == 0, proc.stderr
    for option in ("--num_perturbations", "--batch_size", "--method", "--precision"):
        assert option in proc.stdout


def test_cli_rejects_bad_options(tiny_ckpt, small_h5ad, tmp_path) -> None:
    for args in (
        ["benchmark", "--methods", "warp", "--out", str(tmp_path / "a")],
        ["benchmark", "--batch-sizes", "8,x", "--out", str(tmp_path / "b")],
        ["benchmark", "--data", str(small_h5ad), "--out", str(tmp_path / "c")],
        ["optimized", "--method", "onnx", "--output_dir", str(tmp_path / "d")],
    ):
        res = CliRunner().invoke(app, args)
        assert isinstance(res.exception, IspoError), args


@pytest.mark.slow
def test_compile_row_on_cpu(tiny_model, small_adata) -> None:
    """torch.compile needs a C++ compiler on CPU and ~30 s on this model: slow checks only."""
    config = BenchConfig(methods="fast,fast+compile", repeats=1)
    res = run_benchmark(small_adata[:3], tiny_model, ispo.demo_vocab(), config)
    r = res.row("fast+compile")
    if r["status"] == "unavailable":  # reported, not a pass: the check did not run
        assert "torch.compile failed" in r["reason"]
        pytest.skip(f"torch.compile unavailable here: {r['reason']}")
    assert r["status"] == "ok" and r["cos_min"] >= 0.9999
    assert "torch.compile" in r["backend"] and r["warmup_s"] > 0


def test_slow_method_is_timed_on_fewer_cells_not_skipped(
    tiny_model, small_adata, monkeypatch
) -> None:
    monkeypatch.setattr(guards, "ROW_BUDGET_BASELINE_PASSES", 0.0)  # the budget alone decides
    config = BenchConfig(
        methods="bf16,fast", repeats=1, row_budget_s=1e-9, max_slowdown=None, warmup_cells=2
    )
    lines: list[str] = []
    res = run_benchmark(
        small_adata[:3], tiny_model, ispo.demo_vocab(), config, on_progress=lines.append
    )
    base = res.row("baseline")
    assert base["n_cells"] == 3 and base["label"] == "Baseline (bs=10→3)"  # never shrunk
    for name in ("bf16", "fast"):
        r = res.row(name)
        assert r["status"] == "ok" and r["n_cells"] == 1 and r["label"].endswith("[1 of 3 cells]")
        assert r["cells_per_s"] == pytest.approx(1 / r["time_s"])
        assert res.embeddings[name].shape == (1, 16) and r["cos_min"] > 0.99
    assert [line.split("]")[0] for line in lines] == ["[1/3", "[2/3", "[3/3"]
    assert all(" on 3 cells, " in line for line in lines)


def test_cpu_default_data_has_kang_like_cell_lengths() -> None:
    from ispo.cli import bench as cli_bench

    adata, _, what = cli_bench._load_data(None, None, 16, 200, kang_like=True)
    full = ispo.demo_adata(200)
    genes = np.diff(adata.X.tocsr().indptr)
    assert 350 < np.median(genes) < 650  # Kang et al. 2018 PBMCs: median 514 genes per cell
    assert np.median(np.diff(full.X.tocsr().indptr)) > 2000  # the demo itself: ~2,100
    assert "Kang-like" in what and "synthetic" in what  # still said to be synthetic
    thinned = adata.X.toarray()
    assert (thinned <= full.X.toarray()).all() and (thinned == np.round(thinned)).all()
    _, _, plain = cli_bench._load_data("demo", None, 16, 200, kang_like=True)
    assert "Kang-like" not in plain  # an explicit --data demo is left as it is
