"""`ispo report`: result folders of every kind, found by their files, into Markdown + HTML."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import ispo
from ispo.cli.main import main
from ispo.errors import IspoError
from ispo.reporting.render import fmt, markdown_to_html, render_markdown
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
                    "n_genes_in_cell": 500,
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


def test_blocks_render_markdown_and_html(tmp_path):
    """The building blocks as Markdown, and that Markdown as HTML: escaped, tables, notes,
    code, images embedded; numbers formatted for reading."""
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(PNG)
    md = render_markdown(
        "finetune.md.j2",
        label="ft*1",
        notes=["careful"],
        model=None,
        epochs=[{}],
        best=None,
        epoch_rows=[[1, 0.5, None, 1234567, "a|b"]],
        extra=[],
        confusion=None,
        images=[{"path": "figures/a.png", "alt": "a < b"}],
    )
    assert md.startswith("## Fine-tuning: ft\\*1\n") and "> **careful**" in md
    assert "| 1 | 0.5 | - | 1,234,567 | a\\|b |" in md
    html = markdown_to_html(md, base_dir=tmp_path, title="T <1>")
    assert "<title>T &lt;1&gt;</title>" in html and "<h2>Fine-tuning: ft*1</h2>" in html
    assert "<blockquote>" in html and "<td>a|b</td>" in html
    assert 'src="data:image/png;base64,' in html and 'alt="a &lt; b"' in html
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


def _goal_stats(folders, path: Path, min_cells: int) -> pd.DataFrame:
    """A perturb-stats goal-state table of the perturb fixture, written as perturb-stats does."""
    from ispo.perturbation.stats import perturb_stats, write_stats

    results = folders["perturb"] / "isp.parquet"
    df = perturb_stats(results, mode="goal_state_shift", goal_state="stim", min_cells=min_cells)
    write_stats(df, path)
    return df


def test_stats_table_is_shown_as_computed(folders, tmp_path):
    """A perturb-stats table made with --min-cells 11 (no gene of the 10 cells tested) is shown
    with its own parameters and rows, not recomputed with the default --min-cells 10."""
    from ispo.config import save_run_config

    csv = tmp_path / "stats.csv"
    _goal_stats(folders, csv, min_cells=11)
    params = {"results": "isp.parquet", "mode": "goal_state_shift", "method": "paired"}
    save_run_config(csv, {**params, "min_cells": 11, "fdr_alpha": 0.05}, command="perturb-stats")
    assert [r.kind for r in detect(tmp_path)] == ["stats"]
    build_report([csv], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Perturbation statistics: stats.csv" in md
    assert "mode goal_state_shift, method paired, min cells 11, fdr alpha 0.05" in md
    assert "from stats.csv.config.yaml), not recomputed" in md
    table = pd.read_csv(csv)  # what the report must show: the file's own figures
    assert int(table["tested"].sum()) == 0
    assert "the 0 genes seen in at least 11 cells (6 seen in fewer: listed, not tested)" in md
    assert f"{int(table['toward_goal'].sum())} genes move cells toward the goal" in md
    first = table.iloc[0]
    assert f"| {first['perturbed_symbols']} | {first['perturbed_ids']} |" in md


def test_stats_parameters_from_a_parquet_table_or_none(folders, tmp_path):
    _goal_stats(folders, tmp_path / "s.parquet", min_cells=3)
    _goal_stats(folders, tmp_path / "bare.csv", min_cells=3)  # no config beside it
    build_report([tmp_path / "s.parquet", tmp_path / "bare.csv"], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "min cells 3, fdr alpha 0.05" in md and "from s.parquet's metadata" in md
    assert "its parameters were not saved with it (no bare.csv.config.yaml beside it)" in md
    assert "of 6 genes tested" in md  # bare.csv: the count from its own `tested` column


def test_finetune_section(tmp_path):
    """A fine-tuning folder (hand-made here, in the shape ispo finetune writes): per-epoch
    figures, the best epoch by validation macro-F1, the confusion matrix and its own PNGs."""
    d = tmp_path / "ft"
    d.mkdir()
    epochs = [
        {"epoch": 1, "train_loss": 0.9, "val_loss": 0.7, "val_accuracy": 0.6, "val_macro_f1": 0.55},
        {"epoch": 2, "train_loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.8, "val_macro_f1": 0.78},
        {"epoch": 3, "train_loss": 0.3, "val_loss": 0.5, "val_accuracy": 0.75, "val_macro_f1": 0.7},
    ]
    metrics = {"epochs": epochs, "confusion_matrix": [[8, 2], [1, 9]], "classes": ["ctrl", "stim"]}
    test = {"loss": 0.45, "accuracy": 0.85, "macro_f1": 0.84, "confusion_matrix": [[9, 1], [2, 8]]}
    settings = {"epochs": 3, "lr": 0.0001, "max_input": 256, "dropout": None}
    metrics |= {"test": test, "settings": settings}
    (d / "metrics.json").write_text(json.dumps({**metrics, "random_init": True}))
    (d / "confusion_matrix.png").write_bytes(PNG)
    (d / "training_curve.png").write_bytes(PNG)
    assert [r.kind for r in detect(d)] == ["finetune"]
    assert [r.kind for r in detect(d / "metrics.json")] == ["finetune"]
    build_report([d], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Fine-tuning: ft" in md and "FROM RANDOM WEIGHTS: this classifier" in md
    assert "RANDOM WEIGHTS: this" not in md.replace("FROM RANDOM WEIGHTS: this", "")
    assert "3 epochs; best validation macro-F1 0.78 at epoch 2 (accuracy 0.8" in md
    assert "| 2 | 0.5 | 0.4 | 0.8 | 0.78 |" in md
    assert "Test cells, scored once with the kept weights: macro-F1 0.84 (accuracy 0.85" in md
    assert "| max_input | 256 |" in md and "| lr | 1.00e-04 |" in md
    assert "| dropout |" not in md  # unset: the checkpoint's own
    assert "| true \\\\ predicted | ctrl | stim |" in md and "| stim | 1 | 9 |" in md
    assert "![training curve](figures/ft-training_curve.png)" in md
    assert (tmp_path / "r" / "figures" / "ft-confusion_matrix.png").is_file()


CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 4000) -> Path:
    """``html`` as headless Chromium draws it (no network: the report is self-contained)."""
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={png.parent / 'chromium-profile'}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            html.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    return png


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt install chromium)"
)
def test_report_looks_right_in_headless_chromium(folders, tmp_path):
    """The HTML report drawn by a real browser: its style applies (the red border of the
    random-weights notes, the grey table headers) and its embedded figures are drawn (the blue
    bars of the hits chart)."""
    from PIL import Image

    out = tmp_path / "report"
    build_report(list(folders.values()), out, title="Run 7")
    png = screenshot(out / "report.html", tmp_path / "shot.png")
    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 4000)
    colours = {c for _, c in image.getcolors(maxcolors=1 << 20)}
    assert (217, 83, 79) in colours  # .note border, #d9534f
    assert (243, 243, 243) in colours  # table header, #f3f3f3
    assert (44, 127, 184) in colours  # bars of the embedded hits and speedup charts, #2c7fb8
    assert len(colours) > 200  # text, tables and figures, not a blank or error page


def test_finetune_section_names_the_kept_epoch(tmp_path):
    """Two epochs tie on macro-F1: the report names the one ispo finetune kept."""
    d = tmp_path / "ft"
    d.mkdir()
    epochs = [
        {"epoch": 1, "train_loss": 0.5, "val_loss": 0.30, "val_accuracy": 0.9, "val_macro_f1": 0.9},
        {"epoch": 2, "train_loss": 0.4, "val_loss": 0.20, "val_accuracy": 0.9, "val_macro_f1": 0.9},
    ]
    (d / "metrics.json").write_text(json.dumps({"epochs": epochs, "classes": ["a", "b"]}))
    build_report([d], tmp_path / "r")
    assert "best validation macro-F1 0.9 at epoch 2" in (tmp_path / "r" / "report.md").read_text()
    (d / "metrics.json").write_text(
        json.dumps({"epochs": epochs, "classes": ["a", "b"], "best_epoch": 1})
    )
    build_report([d], tmp_path / "r2")
    assert "best validation macro-F1 0.9 at epoch 1" in (tmp_path / "r2" / "report.md").read_text()


def test_class_prob_table_shows_the_probability_change(tmp_path):
    """A perturb-stats class_prob table: its summary shows the goal probability's change and the
    share of cells flipped to the goal (not the embedding-shift columns it does not have)."""
    table = pd.DataFrame(
        {
            "perturbed_symbols": ["ISG15", "ACTB"], "perturbed_ids": ["E1", "E2"],
            "delta_prob_goal": [0.06, 0.0], "delta_prob_goal_ci95_low": [-0.04, -0.001],
            "delta_prob_goal_ci95_high": [0.17, 0.001], "goal_percentile_in_cell": [0.89, 0.5],
            "goal_call_fdr": [1.0, 1.0], "toward_goal": [False, False],
            "away_from_goal": [False, False], "n_detections": [20, 18], "tested": [True, True],
            "flip_to_goal_share": [0.05, 0.0],
        }
    )  # fmt: skip
    table.to_csv(tmp_path / "cp.csv", index=False)
    build_report([tmp_path / "cp.csv"], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| perturbed_symbols"))
    assert "delta_prob_goal" in header and "flip_to_goal_share" in header
    assert "shift_to_goal" not in header
    assert "| ISG15 | E1 | 20 | 0.06 |" in md
