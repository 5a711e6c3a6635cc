"""The perturb progress bar (issue 25): its total of perturbations is shown before the first
shard runs, it moves batch by batch inside a shard (not only when cells finish), it ends at
the number of rows the run wrote, and the cells done stand beside it.

Oracle: the result table's row count, and the bar's own frames as tqdm writes them to stderr.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest

from _scaleout import tiny_checkpoint, write_small
from ispo.cli.main import main

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
def test_total_up_front_moves_within_a_shard_and_ends_at_the_rows(
    files, tmp_path, capsys, monkeypatch, kind
):
    for k, v in EVERY_UPDATE.items():
        monkeypatch.setenv(k, v)
    ckpt, data = files
    out = tmp_path / "p.parquet"
    main(["perturb", data, "--vocab", "demo", "--model", ckpt, "--device", "cpu",
          "--perturb-type", kind, "--shard-cells", "3", "--batch-tokens", "64",
          "--out", str(out)])  # fmt: skip
    rows = len(pd.read_parquet(out))
    seen = frames(capsys.readouterr().err)
    first, last = seen[0], seen[-1]
    assert first[0] == 0 and first[2:] == (0, 6)  # before any work: the total is there
    if kind == "delete":  # one perturbation per gene: the total up front is exact
        assert first[1] == rows
    assert last == (rows, rows, 6, 6)
    # inside the first shard (no cell done yet) the bar already moved
    assert any(n > 0 and cells == 0 for n, _, cells, _ in seen)
