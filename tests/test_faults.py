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
