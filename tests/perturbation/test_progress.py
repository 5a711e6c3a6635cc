"""The perturb progress bar (issue 25): its total of perturbations is shown before the first
shard runs, it moves batch by batch inside a shard (not only when cells finish), it ends at
the number of rows the run wrote, and the cells done stand beside it.

Oracle: the result table's row count, and the bar's own frames as tqdm writes them to the
stderr of a real ``python -m ispo`` child (tqdm reads the settings that draw every update from
the environment when it is imported, hence a fresh process).
"""

from __future__ import annotations

import re
import subprocess

import pandas as pd
import pytest

from _scaleout import REPO, env, ispo_cmd, tiny_checkpoint, write_small

# every update drawn (tqdm's own settings, read from the environment), not ~10 per second
EVERY_UPDATE = {"TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1"}
FRAME = re.compile(r"(\d+)/(\d+) \[[^\]]*cells (\d+)/(\d+)\]")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    return str(tiny_checkpoint(root / "ckpt")), str(write_small(root / "d.h5ad", 6, seed=4))


def frames(err: str) -> list[tuple[int, int, int, int]]:
    return [tuple(map(int, m.groups())) for m in FRAME.finditer(err)]


@pytest.mark.parametrize("kind", ["delete", "overexpress"])
def test_total_up_front_moves_within_a_shard_and_ends_at_the_rows(files, tmp_path, kind):
    ckpt, data = files
    out = tmp_path / "p.parquet"
    cmd = ispo_cmd("perturb", data, "--vocab", "demo", "--model", ckpt, "--device", "cpu",
                   "--perturb-type", kind, "--shard-cells", "3", "--batch-tokens", "64",
                   "--out", str(out))  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env() | EVERY_UPDATE, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = len(pd.read_parquet(out))
    seen = frames(res.stderr)
    first, last = seen[0], seen[-1]
    assert first[0] == 0 and first[2:] == (0, 6)  # before any work: the total is there
    if kind == "delete":  # one perturbation per gene: the total up front is exact
        assert first[1] == rows
    assert last == (rows, rows, 6, 6)
    # inside the first shard (no cell done yet) the bar already moved
    assert any(n > 0 and cells == 0 for n, _, cells, _ in seen)
