"""When a measured setting counts: the constraints, from figures written out by hand."""

from __future__ import annotations

import math
import re

import pytest

from ispo.errors import IspoError
from ispo.tuning.options import Limits, TuneOptions

LIMITS = Limits(
    min_cosine=0.999, min_cosine_cell=0.995, memory_cap_mib=100.0, isp_cells=2, isp_tolerance=1e-4
)
GOOD = {
    "cos_mean": 0.9999,
    "cos_min": 0.999,
    "mem_peak_mib": 80.0,
    "isp_max_shift_diff": 5e-5,
    "nonfinite": None,
}


def test_a_setting_within_every_limit_is_feasible():
    values, reason = LIMITS.check(GOOD)
    assert reason is None
    assert values == pytest.approx([0.999 - 0.9999, 0.995 - 0.999, 80.0 - 100.0, 5e-5 - 1e-4])


def test_each_limit_says_why_it_fails():
    bad = GOOD | {"cos_min": 0.98, "mem_peak_mib": 120.0, "isp_max_shift_diff": 3e-4}
    values, reason = LIMITS.check(bad)
    assert reason == (
        "worst cell cosine 0.980000 < 0.995; peak memory 120 MiB > cap 100 MiB; "
        "ISP max |shift difference| 3.00e-04 > 0.0001"
    )
    assert values[0] < 0 and values[1:] == pytest.approx([0.015, 20.0, 2e-4])


def test_non_finite_results_fail_with_finite_constraints():
    values, reason = LIMITS.check({"nonfinite": "2 of 4 cells' embeddings", "cos_mean": None})
    assert values == [1.0, 1.0, 1.0, 1.0] and all(math.isfinite(v) for v in values)
    assert reason == "not finite: 2 of 4 cells' embeddings (an overflow in this precision?)"


def test_without_the_perturbation_check_its_figure_is_ignored():
    values, reason = Limits(0.999, 0.995, None, 0, 1e-4).check(GOOD | {"isp_max_shift_diff": 1.0})
    assert reason is None and values[2:] == [-1.0, -1.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_cosine_cell": 0.0}, "--min-cosine-cell must be in (0, 1]"),
        ({"isp_cells": -1}, "--isp-cells must be 0 (off) or more"),
        ({"isp_tolerance": 0.0}, "--isp-tolerance must be positive"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(IspoError, match=re.escape(message)):
        TuneOptions(**kwargs)
