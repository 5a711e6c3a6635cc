"""``ispo finetune`` from the command line with a ``--config`` YAML: flags override the file,
the folder holds the model, metrics and the config it ran with (itself a valid --config)."""

from __future__ import annotations

import json

import torch
import yaml

from ispo.cli.main import main
from ispo.model.variants import auto_precision


def test_config_file_drives_the_run_and_is_saved(ft_ckpt, ft_data, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "label-key": "state", "model": str(ft_ckpt), "vocab": "demo", "device": "cpu",
                "finetune": {"epochs": 3, "lr": 0.002, "val-size": 0.25, "test-size": 0.0,
                             "schedule": "cosine", "warmup": 1, "max-input": 16},
            }
        )
    )  # fmt: skip
    out = tmp_path / "clf"
    main(["finetune", str(ft_data), "--config", str(cfg), "--out", str(out), "--epochs", "1"])
    echo = capsys.readouterr().out
    assert "3 classes, 36 training cells: best epoch 1 of 1" in echo
    metrics = json.loads((out / "metrics.json").read_text())
    s = metrics["settings"]
    assert (s["epochs"], s["lr"], s["schedule"], s["warmup"], s["test_size"]) == (
        1, 0.002, "cosine", 1, 0.0
    )  # fmt: skip
    assert metrics["test"] is None and metrics["label_key"] == "state"
    assert s["max_input"] == 16
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 16
    # --precision auto (the default) is resolved for the device and recorded
    assert s["precision"] == str(auto_precision(torch.device("cpu"))[0])
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["schedule"] == "cosine"
