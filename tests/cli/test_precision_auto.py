"""`--precision auto` on `ispo embed` and `ispo perturb`: resolved once at load for the device,
printed, and recorded in the output's metadata (what was chosen and why)."""

from __future__ import annotations

import json

import anndata as ad
import pytest

from _scaleout import tiny_checkpoint, write_small
from ispo.cli.main import main
from support import cpu_has_bf16_units


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    return str(write_small(root / "d.h5ad", 4)), str(tiny_checkpoint(root / "ckpt"))


def expected() -> str:
    return "bf16" if cpu_has_bf16_units() else "fp32"


def test_embed_precision_auto_is_printed_and_recorded(files, tmp_path, capsys):
    data, ckpt = files
    out = tmp_path / "e.h5ad"
    main(["embed", data, "--vocab", "demo", "--model", ckpt, "--device", "cpu",
          "--precision", "auto", "--out", str(out)])  # fmt: skip
    assert f"precision auto: {expected()}" in capsys.readouterr().err
    uns = ad.read_h5ad(out).uns["geneformer"]
    assert uns["precision"] == expected()
    assert uns["precision_auto"].startswith(expected())


def test_perturb_precision_auto_is_recorded(files, tmp_path, capsys):
    data, ckpt = files
    out = tmp_path / "p.parquet"
    main(["perturb", data, "--vocab", "demo", "--model", ckpt, "--device", "cpu",
          "--precision", "auto", "--out", str(out)])  # fmt: skip
    assert f"precision auto: {expected()}" in capsys.readouterr().err
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["params"]["precision"] == expected()
    assert meta["precision_auto"].startswith(expected())


def test_a_wrong_precision_is_one_line(files, tmp_path, capsys):
    data, ckpt = files
    with pytest.raises(SystemExit, match=r"^2$") as info:
        main(["embed", data, "--vocab", "demo", "--model", ckpt, "--precision", "fp8",
              "--out", str(tmp_path / "x.h5ad")])  # fmt: skip
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: precision must be one of auto, fp32, fp16, bf16, not 'fp8'"
