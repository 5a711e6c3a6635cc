"""Tracking is optional and never required; embed records the shared profiler's figures."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import ispo
from ispo.cli.main import app
from ispo.tracking import Tracker, make_tracker


def test_no_tracking_is_a_noop(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with make_tracker() as tr:
        assert type(tr) is Tracker and not tr.active
        tr.log({"a": 1.0, "b": None, "c": "text"})
        tr.summary({"x": 1})
        tr.log_table("t", ["a"], [[1]])
        tr.log_artifact(["nothing.json"], name="n", type="results")


def test_mlflow_missing_warns_and_continues(monkeypatch, caplog) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///nonexistent")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with caplog.at_level(logging.WARNING, logger="ispo.tracking"):
        tr = make_tracker()
    assert not tr.active and "mlflow is not installed" in caplog.text


def test_wandb_disabled_mode_is_a_noop(monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert not make_tracker(wandb=True).active


def test_benchmark_with_wandb_offline(tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    from transformers import BertConfig, BertForMaskedLM

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = BertConfig(
        vocab_size=ispo.demo_vocab().size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=2048,
        hidden_act="relu",
        pad_token_id=0,
    )
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    BertForMaskedLM(cfg).eval().save_pretrained(ckpt)
    data = tmp_path / "small.h5ad"
    ispo.demo_adata(3)[:, :1000].copy().write_h5ad(data)
    out = tmp_path / "bench"
    res = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--model",
            str(ckpt),
            "--data",
            str(data),
            "--vocab",
            "demo",
            "--n-cells",
            "2",
            "--methods",
            "fast",
            "--repeats",
            "1",
            "--no-plots",
            "--out",
            str(out),
            "--wandb",
            "--wandb-project",
            "ispo-test",
            "--wandb-run-name",
            "tiny",
        ],
    )
    assert res.exit_code == 0, (res.output, res.exception)
    assert json.loads((out / "results.json").read_text())["rows"][0]["status"] == "ok"
    runs = list((out / "wandb").glob("offline-run-*"))
    assert runs, "wandb wrote no offline run"
    assert any(p.suffix == ".wandb" for p in runs[0].iterdir())


def test_embed_records_the_profile() -> None:
    from transformers import BertConfig, BertForMaskedLM

    adata = ispo.demo_adata(3)[:, :800].copy()
    cfg = BertConfig(
        vocab_size=ispo.demo_vocab().size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=2048,
        hidden_act="relu",
        pad_token_id=0,
    )
    torch.manual_seed(0)
    sd = {k: v for k, v in BertForMaskedLM(cfg).state_dict().items()}
    from ispo.model.load import GeneformerModel
    from ispo.model.presets import GeneformerConfig

    model = GeneformerModel(
        GeneformerConfig.from_hf(cfg.to_dict()),
        sd,
        "tiny",
        True,
        0,
        torch.device("cpu"),
        ispo.demo_vocab(),
    )
    ispo.embed(adata, model)
    prof = adata.uns["geneformer"]["profile"]
    assert prof["wall_s"] > 0 and prof["rss_peak_bytes"] > 0 and prof["n_samples"] >= 2
    assert "cpu_percent_avg" in prof and "gpu_util_avg" not in prof  # None dropped for h5ad


def test_tracker_module_imports_no_backend() -> None:
    """wandb and mlflow are imported inside the trackers only (they are optional)."""
    import ispo.tracking as tracking

    assert "wandb" not in vars(tracking) and "mlflow" not in vars(tracking)
    src = Path(tracking.__file__).read_text()
    assert "\nimport wandb" not in src and "\nimport mlflow" not in src
