"""``ispo.faults``: the documented fault-injection point (``ISPO_FAULT``) that tests use instead of
patching internals. Oracle: the documented behaviour of each entry, checked at its public seam."""

from __future__ import annotations

import pytest
import torch

from ispo import faults
from ispo.errors import IspoError
from ispo.tokens import iter_tokenize
from support import make_adata


def test_unset_does_nothing(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.shard_written()
    faults.part_written()
    faults.before_batch(10**9)
    assert faults.chunk_cap(4096) == 4096 and not faults.active("no_int8")
    assert faults.count("shard") == 0  # nothing is counted while the variable is unset


@pytest.mark.parametrize("raw", ["crash_after:1", "oom_above_tokens:lots", "batch_error"])
def test_bad_spec_is_refused(monkeypatch, raw):
    monkeypatch.setenv(faults.ENV, raw)
    with pytest.raises(IspoError, match=r"ISPO_FAULT entry .* is not NAME:N .*fix or unset"):
        faults.chunk_cap(10)


def test_crash_after_the_nth_shard_and_reset(monkeypatch):
    monkeypatch.setenv(faults.ENV, "crash_after_shard:2")
    faults.reset()
    faults.shard_written()
    with pytest.raises(faults.InjectedFault, match="crash after shard 2"):
        faults.shard_written()
    faults.shard_written()  # past the count: no second crash
    assert faults.count("shard") == 3
    faults.reset()
    assert faults.count("shard") == 0


def test_simulated_oom_is_torchs_error_above_the_limit_only(monkeypatch):
    monkeypatch.setenv(faults.ENV, "oom_above_tokens:100,crash_in_part:7")
    faults.before_batch(100)
    with pytest.raises(torch.OutOfMemoryError, match="out of memory on 101 tokens"):
        faults.before_batch(101)
    assert faults.count("oom") == 1 and faults.count("batch") == 2


def test_tokenize_chunk_caps_the_tokenizer_chunks(monkeypatch, vocab_v1):
    adata = make_adata(10)
    assert [len(c) for c in iter_tokenize(adata, vocab_v1)] == [10]
    monkeypatch.setenv(faults.ENV, "tokenize_chunk:3")
    assert [len(c) for c in iter_tokenize(adata, vocab_v1)] == [3, 3, 3, 1]


# ------------------------------------------- a variable left set must not go unnoticed


def test_a_malformed_value_stops_the_command_before_anything_loads(monkeypatch, tmp_path, capsys):
    """One line, exit 2, before the input is read or the model loaded (both are missing here:
    had either been reached first, its own error would have been printed instead)."""
    from ispo.cli.main import main

    monkeypatch.setenv(faults.ENV, "crash_after:1")
    out = tmp_path / "e.h5ad"
    with pytest.raises(SystemExit, match=r"^2$"):
        main(["embed", str(tmp_path / "missing.h5ad"), "--vocab", "demo",
              "--model", str(tmp_path / "no-model"), "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: ISPO_FAULT entry 'crash_after:1' is not NAME:N with NAME one of "
        + ", ".join(faults.NAMES)
        + ": fix or unset ISPO_FAULT"
    ]
    assert not out.exists()


def test_a_set_value_is_announced_and_recorded_in_the_output(
    monkeypatch, tmp_path, caplog, tiny_model_dir
):
    import anndata as ad

    from _scaleout import write_small
    from ispo.cli.main import main

    data = write_small(tmp_path / "d.h5ad", 3)
    monkeypatch.setenv(faults.ENV, "tokenize_chunk:1000, no_int8:1")  # harmless to a plain run
    out = tmp_path / "e.h5ad"
    with caplog.at_level("WARNING"):
        main(["embed", str(data), "--vocab", "demo", "--model", str(tiny_model_dir),
              "--device", "cpu", "--out", str(out)])  # fmt: skip
    warned = [r.getMessage() for r in caplog.records if "ISPO_FAULT" in r.getMessage()]
    assert warned == [
        "ISPO_FAULT=tokenize_chunk:1000,no_int8:1 is set: faults will be injected into this "
        "run on purpose; unset it for a real run"
    ]  # once, though both the command and the loader check it
    assert ad.read_h5ad(out).uns["geneformer"]["ispo_fault"] == "tokenize_chunk:1000,no_int8:1"


def test_unset_leaves_no_trace_in_the_metadata(monkeypatch, tiny_model_dir, caplog):
    import ispo

    monkeypatch.delenv(faults.ENV, raising=False)
    with caplog.at_level("WARNING"):
        model = ispo.load_model(tiny_model_dir, vocab=ispo.demo_vocab(), device="cpu")
    assert "ispo_fault" not in model.metadata()
    assert not [r for r in caplog.records if "ISPO_FAULT" in r.getMessage()]
    monkeypatch.setenv(faults.ENV, "batch_error:1")  # read when the output is written
    assert model.metadata()["ispo_fault"] == "batch_error:1"
