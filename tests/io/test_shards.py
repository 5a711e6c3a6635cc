"""The parts folder: every part recorded with its size and checksum, checked when a run opens
the folder again; a part damaged later still ends in one line saying what to do."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ispo.errors import IspoError
from ispo.io.shards import ShardWriter

FINGERPRINT = {"what": "test"}


def _written(tmp_path, n: int = 3) -> ShardWriter:
    w = ShardWriter(tmp_path / "t.parquet", FINGERPRINT, resume=False, overwrite=False)
    for s in range(n):
        w.write(s, {"cells": pd.DataFrame({"x": [s, s + 10]})})
    return w


def test_reopened_folder_keeps_whole_parts_and_drops_damaged_ones(tmp_path, caplog):
    w = _written(tmp_path)
    w.part(1, "cells").write_bytes(b"PAR1 not a part any more")
    with caplog.at_level("WARNING", logger="ispo.io.shards"):
        again = ShardWriter(tmp_path / "t.parquet", FINGERPRINT, resume=True, overwrite=False)
    assert [again.done(s) for s in range(3)] == [True, False, True]
    assert "shard 1: part cells-000001.parquet is damaged" in caplog.text
    again.write(1, {"cells": pd.DataFrame({"x": [1, 11]})})
    assert again.read("cells")["x"].tolist() == [0, 10, 1, 11, 2, 12]


def test_part_recorded_without_a_checksum_is_recomputed(tmp_path, caplog):
    w = _written(tmp_path, 2)
    manifest = json.loads(w.manifest_path.read_text())
    manifest["done"]["0"] = {"cells": "cells-000000.parquet"}  # as an older ispo recorded it
    w.manifest_path.write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="ispo.io.shards"):
        again = ShardWriter(tmp_path / "t.parquet", FINGERPRINT, resume=True, overwrite=False)
    assert not again.done(0) and again.done(1)
    assert "recorded without size and checksum" in caplog.text


def test_part_damaged_after_the_check_is_one_line_at_merge(tmp_path):
    w = _written(tmp_path)
    w.part(2, "cells").write_bytes(b"garbage")
    out = tmp_path / "t.parquet"
    with pytest.raises(IspoError, match=r"cells-000002\.parquet is unreadable .*--resume") as info:
        w.finish({"cells": out}, {}, tmp_path / "t.json")
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet.parts"]  # no half a table
