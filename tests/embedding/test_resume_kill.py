"""``kill -9`` in the middle of a run, then ``--resume``: exactly the rows of an uninterrupted run.

A real ``python -m ispo`` child is killed with SIGKILL once it has recorded ``HANG_AFTER`` shards
(one cell per shard, so many remain): ``ISPO_FAULT=hang_after_shard:N`` (:mod:`ispo.faults`)
holds it there, so the kill lands mid-run however loaded the machine is. Before resuming, debris
of a half-written shard is planted in the parts folder (a temporary file and a garbage part that
no manifest lists): the resumed run must not take it for done. One recorded part is then
damaged: the resumed run finds it by its recorded size and computes it again. The
uninterrupted references run in this process.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from _scaleout import env, ispo_cmd, kill_9_when, tiny_checkpoint, write_small
from ispo import faults
from ispo.cli.main import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return {
        "ckpt": tiny_checkpoint(root / "ckpt"),
        "data": write_small(root / "d.h5ad", 24, seed=3),
    }


def _done(parts: Path) -> set[str]:
    done: set[str] = set()
    for m in parts.glob("manifest*.json"):
        done |= set(json.loads(m.read_text())["done"])
    return done


HANG_AFTER = 3  # shards the child records before it waits to be killed


def _start_and_kill(cmd: list[str], parts: Path, out: Path) -> set[str]:
    """Start ``cmd``, SIGKILL it once it has recorded ``HANG_AFTER`` shards; return them."""
    child_env = {**env(), faults.ENV: f"hang_after_shard:{HANG_AFTER}"}
    kill_9_when(
        cmd, child_env, lambda: parts.exists() and len(_done(parts)) >= HANG_AFTER,
        timeout=120, waiting_for="part written",
    )  # fmt: skip
    assert not out.exists(), "the run finished before it was killed: make it longer"
    return _done(parts)


def _plant_debris(parts: Path, kind: str, done: set[str], n_shards: int) -> None:
    """A half-written part under its final name (not in any manifest) and a stray temp file."""
    todo = next(s for s in range(n_shards) if str(s) not in done)
    (parts / f"{kind}-{todo:06d}.parquet").write_bytes(b"PAR1 half a part")
    (parts / f".{kind}-{todo:06d}.parquet.tmp").write_bytes(b"PAR1")


def test_perturb_resumes_after_kill_9(files, tmp_path):
    n_cells = 24
    args = [
        str(files["data"]),
        "--vocab",
        "demo",
        "--model",
        str(files["ckpt"]),
        "--shard-cells",
        "1",
        "--device",
        "cpu",
    ]
    out = tmp_path / "isp.parquet"
    parts = tmp_path / "isp.parquet.parts"
    done = _start_and_kill(ispo_cmd("-q", "perturb", *args, "--out", str(out)), parts, out)
    assert len(done) == HANG_AFTER  # killed mid-run
    _plant_debris(parts, "cells", done, n_cells)
    with pytest.raises(SystemExit, match=r"^2$"):  # without --resume the unfinished run is refused
        main(["-q", "perturb", *args, "--out", str(out)])
    main(["-q", "perturb", *args, "--out", str(out), "--resume"])
    ref = tmp_path / "ref.parquet"
    main(["-q", "perturb", *args, "--out", str(ref)])
    a, b = pd.read_parquet(out), pd.read_parquet(ref)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert a["cell_id"].nunique() == n_cells
    assert not a.duplicated(["cell_id", "perturbed_ids"]).any()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["n_cells_this_run"] == n_cells - len(done)  # the recorded shards were skipped
    assert not parts.exists()


def test_embed_resumes_after_kill_9(files, tmp_path, caplog):
    n_cells = 24
    args = [
        str(files["data"]),
        "--vocab",
        "demo",
        "--model",
        str(files["ckpt"]),
        "--chunk-cells",
        "1",
        "--device",
        "cpu",
    ]
    out = tmp_path / "emb.h5ad"
    parts = tmp_path / "emb.h5ad.parts"
    done = _start_and_kill(ispo_cmd("-q", "embed", *args, "--out", str(out)), parts, out)
    assert len(done) == HANG_AFTER
    _plant_debris(parts, "emb", done, n_cells)
    damaged = parts / f"emb-{int(min(done, key=int)):06d}.parquet"  # a recorded part, truncated
    damaged.write_bytes(damaged.read_bytes()[:-10])
    with caplog.at_level("WARNING", logger="ispo.io.shards"):
        main(["-q", "embed", *args, "--out", str(out), "--resume"])
    assert f"shard {min(done, key=int)}: part {damaged.name} is damaged" in caplog.text
    ref = tmp_path / "ref.h5ad"
    main(["-q", "embed", *args, "--out", str(ref)])
    a, b = ad.read_h5ad(out), ad.read_h5ad(ref)
    np.testing.assert_array_equal(a.obsm["X_geneformer"], b.obsm["X_geneformer"])
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert (a.X != b.X).nnz == 0
    stream = a.uns["geneformer"]["stream"]
    assert stream["resumed"] and stream["n_cells_this_run"] == n_cells - len(done) + 1
    assert not parts.exists()


def test_resume_refuses_other_options(files, tmp_path):
    args = [str(files["data"]), "--vocab", "demo", "--model", str(files["ckpt"]), "--device", "cpu"]
    out = tmp_path / "e.h5ad"
    from ispo.io.shards import ShardWriter

    ShardWriter(out, {"something": "else"}, resume=False, overwrite=False).write(
        0, {"emb": pd.DataFrame({"obs_index": [0]})}
    )
    with pytest.raises(SystemExit, match=r"^2$") as info:
        main(["-q", "embed", *args, "--out", str(out), "--resume"])
    assert info.value.code == 2 and not out.exists()
