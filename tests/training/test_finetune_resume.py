"""A fine-tuning run stopped after an epoch, then resumed, ends with the weights of an
uninterrupted run (same seed): in this process through ``ISPO_FAULT=crash_after_epoch:N``, and
as a real ``python -m ispo finetune`` child killed with SIGKILL (``hang_after_epoch:N`` holds it
after its checkpoint, so the kill lands between epochs however loaded the machine is)."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

import ispo
from _scaleout import REPO, env, ispo_cmd, kill_9_when
from ispo import faults
from ispo.errors import IspoError
from ispo.training import DataOptions, TrainSettings

S = TrainSettings(epochs=3, lr=2e-3, precision="fp32", val_size=0.25, test_size=0.25)
OPTS = DataOptions("state", "demo")


@pytest.fixture(scope="module")
def uninterrupted(ft_ckpt, ft_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "clf"
    ispo.finetune(ft_data, ft_ckpt, out, OPTS, S, device="cpu", progress=False)
    return out


def _assert_same_weights(a, b) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0, msg=k)


def _epochs(out) -> list[dict]:
    drop = ("seconds", "train_cells_per_s")
    rows = json.loads((out / "metrics.json").read_text())["epochs"]
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def test_crash_after_an_epoch_then_resume(ft_ckpt, ft_data, tmp_path, uninterrupted, monkeypatch):
    out = tmp_path / "clf"
    monkeypatch.setenv(faults.ENV, "crash_after_epoch:2")
    with pytest.raises(faults.InjectedFault, match="crash after epoch 2"):
        ispo.finetune(ft_data, ft_ckpt, out, OPTS, S, device="cpu", progress=False)
    monkeypatch.delenv(faults.ENV)
    assert not out.exists() and (tmp_path / "clf.train" / "state.pt").is_file()
    with pytest.raises(IspoError, match="unfinished run: pass --resume"):
        ispo.finetune(ft_data, ft_ckpt, out, OPTS, S, device="cpu", progress=False)
    with pytest.raises(IspoError, match="other options or data"):
        ispo.finetune(
            ft_data, ft_ckpt, out, OPTS, S.replace(lr=1e-3), device="cpu", progress=False,
            resume=True,
        )  # fmt: skip
    m = ispo.finetune(ft_data, ft_ckpt, out, OPTS, S, device="cpu", progress=False, resume=True)
    _assert_same_weights(out, uninterrupted)
    assert _epochs(out) == _epochs(uninterrupted)
    assert not (tmp_path / "clf.train").exists()
    # the run's time counts the epochs before the stop too, and says where it resumed
    assert m["resumed_after_epoch"] == 2
    assert m["seconds"] >= sum(e["seconds"] for e in m["epochs"]) > 0
    assert json.loads((uninterrupted / "metrics.json").read_text())["resumed_after_epoch"] is None


@pytest.mark.slow  # two child processes; the in-process crash above runs by default
def test_kill_9_between_epochs_then_resume(ft_ckpt, ft_data, tmp_path, uninterrupted):
    out = tmp_path / "clf"
    args = ["finetune", str(ft_data), "--label-key", "state", "--model", str(ft_ckpt)]
    args += ["--vocab", "demo", "--out", str(out), "--device", "cpu", "--epochs", "3"]
    args += ["--lr", "2e-3", "--precision", "fp32", "--val-size", "0.25", "--test-size", "0.25"]
    state = tmp_path / "clf.train" / "state.pt"
    child_env = {**env(threads=torch.get_num_threads()), faults.ENV: "hang_after_epoch:1"}
    kill_9_when(
        ispo_cmd(*args), child_env, state.exists, timeout=300, waiting_for="epoch checkpoint",
        poll=0.2,
    )  # fmt: skip
    assert not out.exists()
    res = subprocess.run(
        ispo_cmd(*args, "--resume"), capture_output=True, text=True, cwd=REPO,
        env=env(threads=torch.get_num_threads()),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    _assert_same_weights(out, uninterrupted)
