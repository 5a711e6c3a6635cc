"""The ``ispo embed`` progress bar counts cells batch by batch, not a whole chunk of cells at a
time (a 4,096-cell chunk takes minutes on a CPU), and ends at the number of input rows.

Oracle: the bar's frames as tqdm writes them to the stderr of a real ``python -m ispo`` child
(tqdm reads the settings that draw every update from the environment when it is imported).
"""

from __future__ import annotations

import re
import subprocess

from _scaleout import REPO, env, ispo_cmd, tiny_checkpoint, write_small

# every update drawn (tqdm's own settings, read from the environment), not ~10 per second
EVERY_UPDATE = {"TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1"}
FRAME = re.compile(r"embed \(fast\): .*?(\d+)/(\d+) \[")


def test_embed_bar_moves_within_a_chunk(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    data = write_small(tmp_path / "d.h5ad", 12, seed=1)
    cmd = ispo_cmd("embed", str(data), "--vocab", "demo", "--model", str(ckpt), "--device",
                   "cpu", "--chunk-cells", "12", "--batch-tokens", "40", "--workers", "0",
                   "--out", str(tmp_path / "e.h5ad"))  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env() | EVERY_UPDATE, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    seen = [tuple(map(int, m.groups())) for m in FRAME.finditer(res.stderr)]
    assert seen[0] == (0, 12) and seen[-1] == (12, 12)
    assert any(0 < n < 12 for n, _ in seen)  # moved before the one chunk was done
