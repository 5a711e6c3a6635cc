"""`ispo perturb` with the fast-path variants `ispo tune` searches (--int8, --attention,
--compile): same rows, numbers within the variant's rounding, recorded in the metadata (and in
the resume fingerprint: tests/perturb/test_resume.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from _scaleout import tiny_checkpoint, write_small
from ispo.cli.main import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast")
    return [
        str(write_small(root / "d.h5ad", 6)),
        "--vocab",
        "demo",
        "--model",
        str(tiny_checkpoint(root / "ckpt")),
        "--shard-cells",
        "2",
    ]


def _run(common, out, *extra):
    main(["-q", "perturb", *common, *extra, "--out", str(out)])
    return pd.read_parquet(out), json.loads(out.with_suffix(".json").read_text())


def test_int8_and_attention_variants(files, tmp_path):
    plain, meta = _run(files, tmp_path / "plain.parquet")
    assert meta["params"]["fast_settings"] is None
    for extra, atol in ((["--int8"], 2e-2), (["--attention", "math"], 1e-6)):
        got, meta = _run(files, tmp_path / f"{extra[-1]}.parquet", *extra)
        assert got["perturbed_ids"].tolist() == plain["perturbed_ids"].tolist()
        np.testing.assert_allclose(got["cos_sim"], plain["cos_sim"], atol=atol)
        assert meta["params"]["fast_settings"]["int8"] is ("--int8" in extra)
