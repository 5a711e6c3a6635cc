"""`ispo report`: result folders of every kind, found by their files, into Markdown + HTML."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import ispo
from ispo.cli.main import main
from ispo.errors import IspoError
from ispo.reporting.document import Document, fmt
from ispo.reporting.report import build_report, detect

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
    b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7"
    b"5\x81\x84\x00\x00\x00\x00IEND\xaeB`\x82"
)


def bench_folder(root: Path) -> Path:
    """A benchmark result as `ispo benchmark` writes it (results.json with meta and rows)."""
    d = root / "bench"
    d.mkdir()

    def row(method, label, family, cps, speedup, mfu, mem, cos, status="ok", reason=None):
        return {
            "method": method,
            "label": label,
            "family": family,
            "status": status,
            "reason": reason,
            "batching": "fixed 10 cells",
            "cells_per_s": cps,
            "tokens_per_s": None if cps is None else cps * 500,
            "speedup": speedup,
            "mfu": mfu,
            "rss_peak_mib": mem,
            "gpu_mem_peak_mib": None,
            "cos_mean": cos,
        }

    results = {
        "meta": {
            "schema": "ispo-benchmark/1",
            "device": "cpu (x86_64, 2 threads)",
            "created": "2026-01-01T00:00:00",
            "model": {"model": "gf-6L-10M-i2048", "random_init": True},
            "data": {"source": "demo:16", "synthetic": True, "n_cells": 16, "tokens_mean": 1990.5},
            "mfu_definition": "model FLOPs over peak",
            "cpu_count": 2,
            "load_average": {"start": 5.2, "end": 4.1},
            "cpu": {
                "model": "AMD EPYC",
                "cores": 2,
                "capability": "AVX512",
                "flags": {"amx_bf16": False, "avx512_bf16": True},
                "peak_tflops": {"fp32": 0.166},
            },
        },
        "rows": [
            row("baseline", "Baseline (bs=10)", "baseline", 2.0, 1.0, 0.011, 900.0, 1.0),
            row("fast", "ispo fast fp32", "fast", 11.5, 5.75, 0.063, 700.0, 0.9999999),
            row(
                "int8",
                "Quantization int8",
                "quantization",
                None,
                None,
                None,
                None,
                None,
                status="unavailable",
                reason="no int8 backend",
            ),
            {"method": "tokenize", "family": "tokenize", "status": "ok"},
        ],
    }
    (d / "results.json").write_text(json.dumps(results))
    (d / "throughput.png").write_bytes(PNG)  # the benchmark's own plot is reused
    return d


def evaluate_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    labels = np.repeat(["ctrl", "stim"], 20)
    a = ad.AnnData(obs=pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(40)]))
    a.obsm["X_geneformer"] = rng.normal(size=(40, 4)) + (labels == "stim")[:, None] * 5.0
    a.uns["geneformer"] = {"model": "gf-6L-10M-i2048", "random_init": True}
    ispo.evaluate(a, label_key="condition", control_label="ctrl", out=root / "eval")
    return root / "eval"


def tune_folder(root: Path) -> Path:
    d = root / "tune"
    d.mkdir()
    settings = [
        {
            "batch_tokens": 8192,
            "precision": "fp32",
            "attention": "default",
            "compile": False,
            "int8": False,
        },
        {
            "batch_tokens": 16384,
            "precision": "bf16",
            "attention": "flash",
            "compile": False,
            "int8": False,
        },
        {
            "batch_tokens": 65536,
            "precision": "fp32",
            "attention": "math",
            "compile": False,
            "int8": False,
        },
    ]
    trials = [
        {
            "number": 0,
            "state": "complete",
            "cells_per_s": 10.0,
            "cos_mean": 1.0,
            "cos_min": 1.0,
            "mem_peak_mib": 500.0,
            "feasible": True,
            "reason": None,
            "settings": settings[0],
        },
        {
            "number": 1,
            "state": "complete",
            "cells_per_s": 31.0,
            "cos_mean": 0.99995,
            "cos_min": 0.9998,
            "mem_peak_mib": 600.0,
            "feasible": True,
            "reason": None,
            "settings": settings[1],
        },
        {
            "number": 2,
            "state": "pruned",
            "cells_per_s": None,
            "cos_mean": None,
            "cos_min": None,
            "mem_peak_mib": None,
            "feasible": False,
            "reason": "out of memory: CUDA out of memory",
            "settings": settings[2],
        },
    ]
    summary = {
        "kind": "tune",
        "objective": "steady-state cells/s",
        "constraints": {"min_cosine_mean": 0.999, "memory_cap_mib": 70000.0},
        "identity": {
            "model": "gf-6L-10M-i2048",
            "random_init": False,
            "device": "NVIDIA H100",
            "data": "kang.h5ad",
            "n_cells": 500,
        },
        "n_trials": 3,
        "n_complete": 2,
        "n_pruned": 1,
        "n_feasible": 2,
        "best": trials[1],
        "default_trial": trials[0],
        "speedup_vs_default": 3.1,
        "trials": trials,
    }
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "best.yaml").write_text("embed:\n  method: fast\n  precision: bf16\n")
    (d / "study.db").write_bytes(b"")
    return d


def perturb_folder(root: Path) -> Path:
    """A perturb result: Parquet table plus its metadata JSON, with cell states."""
    d = root / "perturb"
    d.mkdir()
    rng = np.random.default_rng(1)
    genes = [f"ENSG{i:011d}" for i in range(6)]
    rows = []
    for cell in range(10):
        for g, gene in enumerate(genes):
            cos = 0.999 - 0.02 * (g == 3) - 0.001 * rng.random()
            rows.append(
                {
                    "cell_id": f"c{cell}",
                    "obs_index": cell,
                    "perturbed_ids": gene,
                    "perturbed_symbols": f"GENE{g}",
                    "perturb_type": "delete",
                    "n_genes": 500,
                    "cos_sim": cos,
                    "cell_cos_sim": cos,
                    "shift_stim": 0.1 * (g == 3) + 0.01 * rng.random(),
                }
            )
    pd.DataFrame(rows).to_parquet(d / "isp.parquet")
    meta = {
        "model": "gf-6L-10M-i2048",
        "random_init": True,
        "n_cells_selected": 10,
        "n_rows": len(rows),
        "perturbations_per_s": 42.0,
        "device": "cpu",
        "params": {
            "genes": "all",
            "perturb_type": "delete",
            "cell_states": {
                "state_key": "condition",
                "start_state": "ctrl",
                "goal_state": "stim",
                "alt_states": [],
            },
        },
    }
    (d / "isp.json").write_text(json.dumps(meta))
    (d / "isp.genes.parquet").write_bytes(b"not read")  # the gene table is not a result
    return d


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    return {
        "benchmark": bench_folder(root),
        "evaluate": evaluate_folder(root),
        "tune": tune_folder(root),
        "perturb": perturb_folder(root),
    }


def test_kinds_are_detected_by_their_files(folders):
    for kind, folder in folders.items():
        found = detect(folder)
        assert [r.kind for r in found] == [kind]
    assert detect(folders["perturb"] / "isp.parquet")[0].kind == "perturb"
    assert detect(folders["evaluate"] / "metrics.json")[0].kind == "evaluate"


def test_report_renders_every_kind(folders, tmp_path, capsys):
    out = tmp_path / "report"
    main(["report", *map(str, folders.values()), "--out", str(out), "--title", "Run 7"])
    assert "report.md" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert md.startswith("# Run 7")
    for heading in (
        "## Benchmark: bench",
        "## Evaluation: eval",
        "## Tuning: tune",
        "## Perturbation: isp.parquet",
    ):
        assert heading in md
    # benchmark: throughput, speedup, MFU, memory; unavailable rows keep their reason
    assert "| ispo fast fp32 | ok | 11.5 | 5750 | 5.75x | 6.3% | 0.68 GiB (RSS) |" in md
    assert "no int8 backend" in md and "tokenize" not in md.split("## Evaluation")[0]
    # the CPU and the load: figures from a busy machine say so
    assert "CPU AMD EPYC: 2 cores, torch ISA AVX512, avx512_bf16, estimated fp32 peak 166" in md
    assert "load average 5.2 at start, 4.1 at end: other processes competed" in md
    assert "| 1.000000 |" in md  # cosines to 6 decimals, not rounded to "1"
    # evaluate: its metrics table and both plots
    assert "| accuracy |" in md and "ARI_cluster/label" in md
    # tune: best setting, speedup, the pruned trial's reason, the best config
    assert "3.10x the default setting" in md and "out of memory" in md
    assert "precision: bf16" in md
    # perturb: top hit first, with the goal-state statistics
    hits = md.split("Top hits")[1]
    assert hits.index("GENE3") < hits.index("GENE0")
    assert "goal_call_fdr" in md and "shift_to_goal" in md and "-volcano.png" in md
    # random weights are flagged at the top and in each affected section
    assert md.split("## ")[0].count("random weights") == 1
    assert md.count("RANDOM WEIGHTS") == 3  # benchmark, evaluate, perturb (tune: trained-free)
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(images) >= 5 and all((out / i).is_file() for i in images)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(images)  # one self-contained file
    assert "<table>" in html and "Run 7" in html
    assert (out / "config.yaml").is_file()


def test_report_errors_are_one_line(folders, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in (
        ([str(empty)], "holds no ispo result"),
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(folders["tune"])], "already exists"),
    ):
        out = tmp_path / "r"
        if message == "already exists":
            out.mkdir()
        with pytest.raises(SystemExit, match=r"^2$") as info:
            main(["report", *args, "--out", str(out)])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    with pytest.raises(IspoError, match=r"cannot read .*metrics\.json as JSON"):
        build_report([broken], tmp_path / "r2")
    assert not (tmp_path / "r2").exists()  # nothing half-written


def test_document_renders_markdown_and_html():
    doc = (
        Document()
        .heading("T")
        .note("careful")
        .paragraph("a < b")
        .table(["x", "y|z"], [[1, 0.5], [1234567, None]])
        .code("k: v", "yaml")
    )
    md = doc.to_markdown()
    assert "> **careful**" in md and "| x | y\\|z |" in md and "| 1,234,567 | - |" in md
    html = doc.to_html()
    assert "a &lt; b" in html and '<div class="note">careful</div>' in html
    assert fmt(0.000012345) == "1.23e-05" and fmt(True) == "yes" and fmt(float("nan")) == "-"


def test_git_commit_names_the_checkout(monkeypatch) -> None:
    """The commit is recorded with every result: an override for copies without .git, else
    git's own answer (a short hash, '+dirty' when tracked files were changed), or 'unknown'."""
    from ispo.provenance import git_commit

    monkeypatch.setenv("ISPO_GIT_COMMIT", "abc1234+dirty")
    assert git_commit() == "abc1234+dirty"
    monkeypatch.delenv("ISPO_GIT_COMMIT")
    got = git_commit()
    assert got == "unknown" or re.fullmatch(r"[0-9a-f]{7,40}(\+dirty)?", got), got
