"""Sharded output and resume: a run stopped after some shards and resumed gives exactly the rows
and files of an uninterrupted run; the output and leftover-parts guards refuse to clobber."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest

from ispo import faults
from ispo.errors import IspoError
from ispo.faults import InjectedFault
from ispo.perturbation.engine import perturb
from ispo.settings import RunSettings

OPTS = dict(perturb_type="delete", emb_mode="cell_and_gene", shard_cells=2, batch_tokens=64)
N_SHARDS = 6  # 12 cells, 2 per shard
# metadata that legitimately differs between two runs of the same work
VOLATILE = {
    "n_cells_this_run",
    "n_perturbations_this_run",
    "seconds",
    "cells_per_s",
    "perturbations_per_s",
    "profile",
}


def kill_after(monkeypatch, n_shards: int) -> None:
    """Make the engine die once ``n_shards`` shards are written (0: in its first batch), through
    the documented ``ISPO_FAULT`` injection point (:mod:`ispo.faults`)."""
    spec = f"crash_after_shard:{n_shards}" if n_shards else "batch_error:1"
    monkeypatch.setenv(faults.ENV, spec)
    faults.reset()


def count_shards(monkeypatch) -> None:
    """Count the shards the next run writes (``faults.count("shard")``), crashing never."""
    kill_after(monkeypatch, 10**9)


# what the injected kill raises, in one line
KILLED = r"ISPO_FAULT: (crash after shard \d+|injected batch error)"
OTHER_RUN = r"was made with other options or data: rerun with the same options, or --overwrite"


def files_of(out) -> dict:
    """What a finished run leaves: the tables (read back) and the metadata."""
    meta = json.loads(out.with_suffix(".json").read_text())
    return {
        "cells": pd.read_parquet(out),
        "genes": pd.read_parquet(out.with_name(out.stem + ".genes.parquet")),
        "meta": {k: v for k, v in meta.items() if k not in VOLATILE},
    }


def assert_same_files(a: dict, b: dict) -> None:
    pd.testing.assert_frame_equal(a["cells"], b["cells"])
    pd.testing.assert_frame_equal(a["genes"], b["genes"])
    assert a["meta"] == b["meta"]


@pytest.fixture(scope="module")
def full_run(setup_v1, tmp_path_factory):
    """An uninterrupted run written to disk, and its files."""
    out = tmp_path_factory.mktemp("full") / "r.parquet"
    df = perturb(setup_v1.adata, setup_v1.model, out=out, **OPTS)
    return df, files_of(out)


def test_uninterrupted_run_files(setup_v1, full_run):
    df, files = full_run
    pd.testing.assert_frame_equal(df, files["cells"])
    pd.testing.assert_frame_equal(df.attrs["gene_table"], files["genes"])
    assert files["meta"]["n_rows"] == len(df) > 0
    assert not df.duplicated(["obs_index", "perturbed_ids"]).any()
    # same rows as a run kept in memory
    mem = perturb(setup_v1.adata, setup_v1.model, **OPTS)
    pd.testing.assert_frame_equal(mem, df)
    pd.testing.assert_frame_equal(mem.attrs["gene_table"], df.attrs["gene_table"])


@pytest.mark.parametrize("n_done", [0, 1, 3, N_SHARDS - 1])
def test_resume_after_kill(setup_v1, full_run, tmp_path, monkeypatch, n_done):
    out = tmp_path / "r.parquet"
    parts = tmp_path / "r.parquet.parts"
    kill_after(monkeypatch, n_done)
    with pytest.raises(InjectedFault, match=KILLED):
        perturb(setup_v1.adata, setup_v1.model, out=out, **OPTS)
    assert not out.exists() and not out.with_suffix(".json").exists()
    if n_done:
        manifest = json.loads((parts / "manifest.json").read_text())
        assert len(manifest["done"]) == n_done
    else:
        assert not (parts / "manifest.json").exists()

    count_shards(monkeypatch)
    df = perturb(setup_v1.adata, setup_v1.model, out=out, resume=True, **OPTS)
    assert faults.count("shard") == N_SHARDS - n_done  # finished shards are not run again
    pd.testing.assert_frame_equal(df, full_run[0])
    pd.testing.assert_frame_equal(df.attrs["gene_table"], full_run[0].attrs["gene_table"])
    assert not df.duplicated(["obs_index", "perturbed_ids"]).any()
    files = files_of(out)
    # the counting run is a drill (ISPO_FAULT set, never firing): its metadata says so
    assert files["meta"].pop("ispo_fault") == "crash_after_shard:1000000000"
    assert_same_files(files, full_run[1])
    assert json.loads(out.with_suffix(".json").read_text())["n_cells_this_run"] == 2 * (
        N_SHARDS - n_done
    )
    assert not parts.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.genes.parquet", "r.json", "r.parquet"]


def test_resume_twice_interrupted(setup_v1, full_run, tmp_path, monkeypatch):
    out = tmp_path / "r.parquet"
    kill_after(monkeypatch, 2)
    with pytest.raises(InjectedFault, match=KILLED):
        perturb(setup_v1.adata, setup_v1.model, out=out, **OPTS)
    kill_after(monkeypatch, 2)
    with pytest.raises(InjectedFault, match=KILLED):
        perturb(setup_v1.adata, setup_v1.model, out=out, resume=True, **OPTS)
    monkeypatch.undo()
    df = perturb(setup_v1.adata, setup_v1.model, out=out, resume=True, **OPTS)
    pd.testing.assert_frame_equal(df, full_run[0])
    assert_same_files(files_of(out), full_run[1])


def test_half_written_part_is_ignored(setup_v1, full_run, tmp_path, monkeypatch):
    """A kill while a part is written leaves a ``.tmp`` file and no manifest entry."""
    out = tmp_path / "r.parquet"
    parts = tmp_path / "r.parquet.parts"
    # two parts per shard (cells, genes): the 5th is shard 2's cells, written but not renamed
    monkeypatch.setenv(faults.ENV, "crash_in_part:5")
    with pytest.raises(InjectedFault, match=r"ISPO_FAULT: crash while writing part 5"):
        perturb(setup_v1.adata, setup_v1.model, out=out, **OPTS)
    monkeypatch.undo()
    stray = [p.name for p in parts.iterdir() if p.name.endswith(".tmp")]
    assert stray, "the simulated kill should leave a half-written part"
    # and some junk of an older kill, half a Parquet file
    (parts / ".cells-000004.parquet.tmp").write_bytes(b"PAR1\x00\x00garbage")
    (parts / ".manifest.json.tmp").write_text('{"fingerprint": ')
    assert len(json.loads((parts / "manifest.json").read_text())["done"]) == 2

    df = perturb(setup_v1.adata, setup_v1.model, out=out, resume=True, **OPTS)
    pd.testing.assert_frame_equal(df, full_run[0])
    assert_same_files(files_of(out), full_run[1])
    assert not parts.exists()


@pytest.mark.parametrize(
    "change",
    [
        dict(perturb_type="overexpress"),
        dict(shard_cells=3),
        dict(emb_mode="cell"),
        dict(emb_layer=0),
        dict(genes=["ENSG00000000003"]),
        dict(max_ncells=8),
        dict(settings=RunSettings(int8=True)),
    ],
    ids=["type", "shard_cells", "emb_mode", "layer", "genes", "cells", "int8"],
)
def test_resume_with_other_options_refused(setup_v1, tmp_path, monkeypatch, change):
    out = tmp_path / "r.parquet"
    kill_after(monkeypatch, 2)
    with pytest.raises(InjectedFault, match=KILLED):
        perturb(setup_v1.adata, setup_v1.model, out=out, **OPTS)
    monkeypatch.undo()
    with pytest.raises(IspoError, match=OTHER_RUN) as info:
        perturb(setup_v1.adata, setup_v1.model, out=out, resume=True, **{**OPTS, **change})
    assert "\n" not in str(info.value)
    assert (tmp_path / "r.parquet.parts" / "manifest.json").exists()  # left for a real resume


def test_resume_with_other_data_refused(setup_v1, tmp_path, monkeypatch):
    out = tmp_path / "r.parquet"
    kill_after(monkeypatch, 2)
    with pytest.raises(InjectedFault, match=KILLED):
        perturb(setup_v1.adata, setup_v1.model, out=out, **OPTS)
    monkeypatch.undo()
    other = setup_v1.adata.copy()
    other.X = other.X * 2 + (other.X > 0) * 1.0  # other counts, other ranks
    with pytest.raises(IspoError, match=OTHER_RUN):
        perturb(other, setup_v1.model, out=out, resume=True, **OPTS)


def test_existing_output_refused(setup_v1, full_run, tmp_path):
    out = tmp_path / "r.parquet"
    out.write_bytes(b"not mine")
    exists = r"r\.parquet already exists: choose another path or pass --overwrite"
    with pytest.raises(IspoError, match=exists) as info:
        perturb(setup_v1.adata, setup_v1.model, out=out, **OPTS)
    assert "\n" not in str(info.value)
    with pytest.raises(IspoError, match=exists):  # resume does not overwrite a finished output
        perturb(setup_v1.adata, setup_v1.model, out=out, resume=True, **OPTS)
    assert out.read_bytes() == b"not mine"
    df = perturb(setup_v1.adata, setup_v1.model, out=out, overwrite=True, **OPTS)
    pd.testing.assert_frame_equal(df, full_run[0])
    assert_same_files(files_of(out), full_run[1])


def test_leftover_parts_need_resume(setup_v1, full_run, tmp_path, monkeypatch):
    out = tmp_path / "r.parquet"
    kill_after(monkeypatch, 3)
    with pytest.raises(InjectedFault, match=KILLED):
        perturb(setup_v1.adata, setup_v1.model, out=out, **OPTS)
    monkeypatch.undo()
    unfinished = r"holds an unfinished run: pass --resume to continue it, or --overwrite"
    with pytest.raises(IspoError, match=unfinished) as info:
        perturb(setup_v1.adata, setup_v1.model, out=out, **OPTS)
    assert "\n" not in str(info.value)
    # --overwrite starts again from scratch
    count_shards(monkeypatch)
    df = perturb(setup_v1.adata, setup_v1.model, out=out, overwrite=True, **OPTS)
    assert faults.count("shard") == N_SHARDS
    pd.testing.assert_frame_equal(df, full_run[0])
    assert not (tmp_path / "r.parquet.parts").exists()


def test_resume_without_parts_runs_everything(setup_v1, full_run, tmp_path, monkeypatch):
    out = tmp_path / "r.parquet"
    count_shards(monkeypatch)
    df = perturb(setup_v1.adata, setup_v1.model, out=out, resume=True, **OPTS)
    assert faults.count("shard") == N_SHARDS
    pd.testing.assert_frame_equal(df, full_run[0])


def test_writing_gives_no_warning(setup_v1, tmp_path):
    """Writing the tables is silent (the gene table kept in ``attrs`` is not JSON: it must not
    reach pyarrow's pandas metadata, which warns and drops it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        perturb(setup_v1.adata, setup_v1.model, out=tmp_path / "r.parquet", **OPTS)


def test_resume_recomputes_damaged_and_missing_parts(
    setup_v1, full_run, tmp_path, monkeypatch, caplog
):
    """Parts damaged after they were recorded (truncated, a flipped byte, deleted) are found by
    their recorded size and checksum on --resume, named, and computed again."""
    out = tmp_path / "r.parquet"
    parts = tmp_path / "r.parquet.parts"
    kill_after(monkeypatch, 4)
    with pytest.raises(InjectedFault, match=KILLED):
        perturb(setup_v1.adata, setup_v1.model, out=out, **OPTS)
    truncated = parts / "cells-000001.parquet"
    truncated.write_bytes(truncated.read_bytes()[:100])
    flipped = parts / "genes-000002.parquet"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    flipped.write_bytes(bytes(data))
    (parts / "cells-000003.parquet").unlink()

    count_shards(monkeypatch)
    with caplog.at_level("WARNING", logger="ispo.io.shards"):
        df = perturb(setup_v1.adata, setup_v1.model, out=out, resume=True, **OPTS)
    assert faults.count("shard") == N_SHARDS - 4 + 3  # the two never done, and the three
    said = [r.getMessage() for r in caplog.records]
    truncated_said = "shard 1: part cells-000001.parquet is damaged (100 bytes"
    assert any(m.startswith(truncated_said) for m in said)
    assert "shard 2: part genes-000002.parquet is damaged (its checksum" in " ".join(said)
    assert "shard 3: part cells-000003.parquet is missing: recomputing it" in said
    assert len(said) == 3
    pd.testing.assert_frame_equal(df, full_run[0])
    files = files_of(out)
    assert files["meta"].pop("ispo_fault") == "crash_after_shard:1000000000"  # the counting drill
    assert_same_files(files, full_run[1])


def test_manifest_records_size_and_checksum(setup_v1, tmp_path, monkeypatch):
    import hashlib

    kill_after(monkeypatch, 2)
    with pytest.raises(InjectedFault, match=KILLED):
        perturb(setup_v1.adata, setup_v1.model, out=tmp_path / "r.parquet", **OPTS)
    parts = tmp_path / "r.parquet.parts"
    done = json.loads((parts / "manifest.json").read_text())["done"]
    for entries in done.values():
        for entry in entries.values():
            data = (parts / entry["file"]).read_bytes()
            assert entry["bytes"] == len(data)
            assert entry["sha256"] == hashlib.sha256(data).hexdigest()
