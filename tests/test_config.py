"""Run configuration files: YAML defaults under command-line flags, and the saved run config."""

from __future__ import annotations

import json
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import typer
import yaml

from ispo.cli.main import app, main
from ispo.config import (
    apply_config,
    command_defaults,
    load_config,
    run_config_path,
    save_run_config,
)
from ispo.errors import IspoError

GROUP = typer.main.get_command(app)


def write(path, text):
    path.write_text(text)
    return path


def test_flat_keys_sections_and_spellings(tmp_path):
    cfg = write(
        tmp_path / "run.yaml",
        """
model: gf-6L-10M-i2048
random-init: true
--batch-tokens: 2048
label_key: condition       # only `ispo evaluate` knows it: skipped for embed
embed:
  precision: bf16
  batch_tokens: 4096       # the section wins over the flat key
evaluate:
  k: 5
""",
    )
    args, defaults = apply_config(
        ["embed", "demo:4", "--config", str(cfg), "--out", "x.h5ad"], GROUP
    )
    assert args == ["embed", "demo:4", "--out", "x.h5ad"]
    assert defaults == {
        "embed": {
            "model": "gf-6L-10M-i2048",
            "random_init": True,
            "batch_tokens": 4096,
            "precision": "bf16",
        }
    }
    _, defaults = apply_config([f"--config={cfg}", "evaluate", "e.h5ad"], GROUP)
    assert defaults["evaluate"] == {"label_key": "condition", "k": 5}
    # a repeatable option takes a list, or one value
    _, defaults = apply_config(["tune", "--config", str(cfg)], GROUP)
    assert defaults["tune"]["batch_tokens"] == [2048]


def test_no_config_leaves_the_command_line_alone():
    assert apply_config(["embed", "--help"], GROUP) == (["embed", "--help"], None)


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ("precison: bf16\n", ["embed"], "unknown key 'precison' for `ispo embed`"),
        ("embed:\n  label-key: x\n", ["embed"], "unknown key 'label-key'"),
        ("config: other.yaml\n", ["embed"], "'config' cannot be set"),
        ("- a\n- b\n", ["embed"], "must be a mapping"),
        ("model: [unclosed\n", ["embed"], "not valid YAML"),
        ("model: m\n", [], "needs a command"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, text, args, message):
    cfg = write(tmp_path / "bad.yaml", text)
    with pytest.raises(IspoError, match=re.escape(message)) as info:
        apply_config([*args, "--config", str(cfg)], GROUP)
    assert "\n" not in str(info.value)


def test_missing_config_file_and_doubled_flag(tmp_path):
    with pytest.raises(IspoError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(IspoError, match="needs a file"):
        apply_config(["embed", "--config"], GROUP)
    cfg = write(tmp_path / "c.yaml", "seed: 1\n")
    with pytest.raises(IspoError, match="given twice"):
        apply_config(["embed", "--config", str(cfg), "--config", str(cfg)], GROUP)


def test_cli_error_for_bad_config_exits_2(tmp_path, capsys):
    cfg = write(tmp_path / "bad.yaml", "bogus: 1\n")
    with pytest.raises(SystemExit, match=r"^2$") as info:
        main(["report", str(tmp_path), "--out", str(tmp_path / "r"), "--config", str(cfg)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "unknown key 'bogus'" in err and "\n" not in err


def _embedded_file(path, n=40, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(["ctrl", "kd"], n // 2)
    X = rng.normal(size=(n, 6)) + (labels == "kd")[:, None] * 4.0
    a = ad.AnnData(obs=pd.DataFrame({"condition": labels}, index=[f"c{i}" for i in range(n)]))
    a.obsm["X_geneformer"] = X.astype(np.float32)
    a.write_h5ad(path)
    return path


def test_flags_override_the_config_and_the_used_config_is_saved(tmp_path):
    emb = _embedded_file(tmp_path / "emb.h5ad")
    cfg = write(
        tmp_path / "run.yaml",
        f"input: {emb}\nlabel-key: condition\nseed: 3\nk: 4\nout: {tmp_path / 'from_config'}\n",
    )
    main(["evaluate", "--config", str(cfg), "--seed", "7", "--out", str(tmp_path / "ev")])
    assert not (tmp_path / "from_config").exists()
    saved = yaml.safe_load((tmp_path / "ev" / "config.yaml").read_text())
    assert saved["seed"] == 7 and saved["k"] == 4 and saved["label-key"] == "condition"
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["params"]["seed"] == 7 and metrics["params"]["k"] == 4
    # The saved file is itself a valid --config for the same command: same run again.
    main(
        [
            "evaluate",
            "--config",
            str(tmp_path / "ev" / "config.yaml"),
            "--out",
            str(tmp_path / "ev2"),
        ]
    )
    again = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert again["classification"] == metrics["classification"]


def test_save_run_config_places_and_round_trips(tmp_path):
    folder = tmp_path / "result"
    folder.mkdir()
    assert run_config_path(folder) == folder / "config.yaml"
    assert run_config_path(tmp_path / "new_folder") == tmp_path / "new_folder" / "config.yaml"
    assert run_config_path(tmp_path / "emb.h5ad") == tmp_path / "emb.h5ad.config.yaml"
    params = {
        "input": "demo:4",
        "out": tmp_path / "emb.h5ad",
        "batch_tokens": 4096,
        "precision": "bf16",
        "random_init": True,
        "layer": None,
    }
    written = save_run_config(tmp_path / "emb.h5ad", params, command="embed")
    assert written == tmp_path / "emb.h5ad.config.yaml"
    text = written.read_text()
    assert text.startswith("# ispo embed run configuration")
    loaded = load_config(written)
    assert loaded["batch-tokens"] == 4096 and loaded["out"] == str(tmp_path / "emb.h5ad")
    defaults = command_defaults(loaded, GROUP.commands, "embed")
    assert defaults == {k: (str(v) if k == "out" else v) for k, v in params.items()}
    with pytest.raises(ValueError, match="outside a running"):
        save_run_config(folder)


def test_settings_of_another_commands_section_are_named_when_unused(tmp_path, caplog):
    """A best.yaml tuned for embed only (no perturb section) gives perturb nothing: say so."""
    cfg = write(tmp_path / "best.yaml", "embed:\n  precision: bf16\n  batch-tokens: 4096\n")
    with caplog.at_level("WARNING", logger="ispo.config"):
        _, defaults = apply_config(["perturb", "demo:4", "--config", str(cfg)], GROUP)
    assert defaults == {"perturb": {}}
    assert "batch-tokens, precision set only in other commands' sections" in caplog.text
    assert "`ispo perturb` does not use them" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ispo.config"):
        apply_config(["embed", "demo:4", "--config", str(cfg)], GROUP)
    assert caplog.text == ""
