"""A checkpoint with a NaN or Inf in a weight is refused at load, in one line naming the tensor
(it would otherwise embed every cell as NaN with exit status 0)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import ispo
from _scaleout import tiny_checkpoint, write_small
from ispo.cli.main import main

BAD = "bert.encoder.layer.1.output.dense.weight"


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A tiny checkpoint with one NaN and one Inf in one weight tensor."""
    path = tiny_checkpoint(tmp_path_factory.mktemp("nan") / "ckpt")
    weights = path / "model.safetensors"
    sd = load_file(weights)
    sd[BAD][3, 5] = float("nan")
    sd[BAD][0, 1] = float("-inf")
    save_file(sd, weights, metadata={"format": "pt"})
    return path


def test_nan_weight_is_refused_naming_the_tensor(damaged):
    with pytest.raises(ispo.IspoError, match=f"^weight {BAD} of the checkpoint in .* holds 2 NaN"):
        ispo.load_model(damaged, device="cpu")


def test_nan_weight_on_the_command_line(damaged, tmp_path, capsys):
    src = write_small(tmp_path / "in.h5ad", 4)
    out = tmp_path / "out.h5ad"
    with pytest.raises(SystemExit) as stop:
        main(["embed", str(src), "--model", str(damaged), "--vocab", "demo", "--out", str(out)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: weight {BAD} ") and "damaged" in err[-1]
    assert not out.exists()


def test_finite_weights_load(tmp_path):
    model = ispo.load_model(tiny_checkpoint(tmp_path / "ok"), device="cpu")
    assert all(torch.isfinite(t).all() for t in model.state_dict.values())
