"""perturb streams its input: it tokenizes chunk by chunk (selection, target states and each
shard's cells in separate passes) and never holds every cell's tokens. Results must not depend
on where the chunk boundaries fall, with shards spanning chunks, filters that skip cells,
cell states, and runs that skip done shards."""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest

from ispo import faults
from ispo.perturbation import passes
from ispo.perturbation.engine import perturb

# the module (``ispo.tokenize`` as an attribute is the function of the same name)
tokenize_module = importlib.import_module("ispo.tokens")
STATES = {"state_key": "state", "start_state": "a", "goal_state": "b", "alt_states": ["c"]}
CASES = {
    "all": dict(shard_cells=2),
    "filter": dict(shard_cells=3, cell_filter={"state": ["a", "c"]}),
    "states": dict(shard_cells=1, cell_states=STATES, emb_mode="cell_and_gene"),
    "range": dict(shard_cells=2, cell_range=(1, 7), genes=["ENSG00000000003"]),
}


@pytest.mark.parametrize("chunk", [1, 2, 5])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_chunking_does_not_change_results(setup_v1, monkeypatch, case, chunk):
    s = setup_v1
    whole = perturb(s.adata, s.model, **CASES[case])
    monkeypatch.setenv(faults.ENV, f"tokenize_chunk:{chunk}")  # the documented hook
    parts = perturb(s.adata, s.model, **CASES[case])
    # state embeddings are sums over chunks: the shifts equal to float32 rounding of a
    # difference of two cosines; every other column exactly
    shifts = [c for c in whole.columns if c.startswith("shift_")]
    pd.testing.assert_frame_equal(
        parts.drop(columns=shifts), whole.drop(columns=shifts), check_exact=True
    )
    pd.testing.assert_frame_equal(
        parts[shifts], whole[shifts], check_exact=False, rtol=0, atol=5e-7
    )
    if "gene_table" in whole.attrs:
        pd.testing.assert_frame_equal(parts.attrs["gene_table"], whole.attrs["gene_table"])


def test_shard_tokens_yields_only_wanted_shards_and_stops_early(setup_v1):
    s = setup_v1
    read = []

    def chunks():
        for part in tokenize_module.iter_tokenize(s.adata, s.vocab, chunk_size=2):
            read.append(len(part))
            yield part

    every = tokenize_module.tokenize(s.adata, s.vocab)
    shards = [np.array([0, 1, 2]), np.array([3, 5]), np.array([6, 7, 8])]
    got = list(passes.iter_shards(chunks(), shards, {1}))
    assert [i for i, _ in got] == [1]
    np.testing.assert_array_equal(got[0][1].tokens, every.subset(np.array([3, 5])).tokens)
    np.testing.assert_array_equal(got[0][1].obs_index, every.obs_index[[3, 5]])
    assert sum(read) == 6  # stopped once shard 1 was out: cells 6.. were never tokenized
