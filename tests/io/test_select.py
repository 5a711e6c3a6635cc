"""Cell selection against Geneformer's own draw (``datasets.Dataset.shuffle(seed=42)``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ispo.errors import IspoError
from ispo.io.select import choose_rows, filter_mask, sample


def geneformer_draw(n: int, max_ncells: int) -> list[int]:
    """What Geneformer's downsample_and_sort keeps of n filtered cells (as a set of positions),
    computed by the ``datasets`` package itself."""
    datasets = pytest.importorskip("datasets")
    shuffled = datasets.Dataset.from_dict({"i": list(range(n))}).shuffle(seed=42)
    return sorted(shuffled.select(range(max_ncells))["i"])


@pytest.mark.parametrize("n,k", [(10, 3), (1000, 17), (5, 5)])
def test_sample_is_geneformers_draw(n, k):
    positions = np.arange(100, 100 + n)
    assert (sample(positions, k) - 100).tolist() == geneformer_draw(n, k)


def test_sample_keeps_everything_below_the_cap():
    positions = np.array([3, 9, 11])
    assert sample(positions, 10).tolist() == [3, 9, 11]
    assert sample(positions, None).tolist() == [3, 9, 11]


def test_filter_mask_compares_as_text():
    obs = pd.DataFrame({"batch": [1, 2, 1, 3], "kind": ["a", "b", "b", "a"]})
    assert filter_mask(obs, {"batch": ["1", "3"]}).tolist() == [True, False, True, True]
    assert filter_mask(obs, {"batch": 1, "kind": "b"}).tolist() == [False, False, True, False]
    with pytest.raises(IspoError, match="filter key 'nope' is not an obs column: choose one of"):
        filter_mask(obs, {"nope": ["x"]})


def test_choose_rows_draws_per_state_and_skips_failing_cells():
    n = 40
    obs = pd.DataFrame(
        {
            "state": ["a", "b"] * (n // 2),
            "filter_pass": [0 if i % 7 == 0 else 1 for i in range(n)],
        }
    )
    assert choose_rows(obs) is None
    mask = choose_rows(obs, max_ncells=5, per="state")
    for st in ("a", "b"):
        pool = [i for i in range(n) if obs["state"][i] == st and obs["filter_pass"][i]]
        got = [i for i in np.flatnonzero(mask) if obs["state"][i] == st]
        assert got == [pool[j] for j in geneformer_draw(len(pool), 5)]
    with pytest.raises(IspoError, match="no cell left after --filter"):
        choose_rows(obs, {"state": ["zz"]})
