"""``ispo finetune`` on bad labels or options: one ``error:`` line naming the problem and the
fix, exit code 2, nothing written (no result folder, no checkpoint folder)."""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pytest

from _scaleout import small_adata
from ispo.cli.main import main
from ispo.errors import IspoError
from ispo.training import TrainSettings


def _one_class(a: ad.AnnData) -> None:
    a.obs["state"] = "a"


def _nan_labels(a: ad.AnnData) -> None:
    a.obs["state"] = a.obs["state"].astype(object)
    a.obs.iloc[[1, 4], a.obs.columns.get_loc("state")] = np.nan


def _missing_column(a: ad.AnnData) -> None:
    del a.obs["state"]


def _tiny_class(a: ad.AnnData) -> None:
    a.obs["state"] = ["a"] * (a.n_obs - 1) + ["b"]


CASES = [
    ("one-class", _one_class, [], "has one class ('a')"),
    ("nan-labels", _nan_labels, [], "2 cell(s) have no label (NaN)"),
    ("missing-label-column", _missing_column, [], "label column 'state' is not in obs"),
    ("class-too-small", _tiny_class, [], "fewer cells than the 3 parts"),
    ("freeze-too-many", lambda a: None, ["--freeze-layers", "3"], "exceeds the model's 2 layers"),
    ("bad-schedule", lambda a: None, ["--schedule", "step"], "schedule must be one of"),
]


@pytest.mark.parametrize(("case", "edit", "extra", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(case, edit, extra, message, ft_ckpt, tmp_path, capsys):
    a = small_adata(24, seed=5)
    edit(a)
    a.write_h5ad(tmp_path / "in.h5ad")
    before = set(tmp_path.iterdir())
    args = ["finetune", str(tmp_path / "in.h5ad"), "--label-key", "state", "--vocab", "demo"]
    args += ["--model", str(ft_ckpt), "--out", str(tmp_path / "clf"), "--device", "cpu", *extra]
    with pytest.raises(SystemExit, match=r"^2$"):
        main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in re.split(r"[\r\n]+", err) if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err
    assert set(tmp_path.iterdir()) == before, "something was written"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"val_size": 0.0}, "val_size must be between 0 and 1"),
        ({"val_size": 0.5, "test_size": 0.5}, "must leave training cells"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"dropout": 1.0}, "dropout must be in [0, 1)"),
    ],
)
def test_settings_refuse_impossible_values(change, message):
    with pytest.raises(IspoError, match=re.escape(message)):
        TrainSettings(**change)
