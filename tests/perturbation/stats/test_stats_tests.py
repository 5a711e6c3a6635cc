"""The statistical tests of perturb-stats against scipy and hand-computed values."""

import itertools

import numpy as np
import pytest
from scipy import stats as sps
from stats_support import reference_rank_test

from ispo.perturbation.stats.tests import (
    bh_fdr,
    mean_t_test,
    ranksum_grouped,
    within_cell_rank_test,
)


def test_bh_fdr_hand_computed():
    # sorted p: .005 .01 .03 .04 -> p*m/rank: .02 .02 .04 .04 (already monotone)
    q = bh_fdr([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(q, [0.02, 0.04, 0.04, 0.02])
    # step-up: the larger q of rank 2 (.05*3/2=.075) is pulled down to rank 3's .06
    np.testing.assert_allclose(bh_fdr([0.01, 0.05, 0.02]), [0.03, 0.05, 0.03])
    np.testing.assert_allclose(bh_fdr([0.9, 0.95]), [0.95, 0.95])


def test_bh_fdr_matches_scipy_and_skips_nan():
    p = np.random.default_rng(1).random(200) ** 3
    np.testing.assert_allclose(bh_fdr(p), sps.false_discovery_control(p, method="bh"))
    q = bh_fdr([0.01, np.nan, 0.04, 0.03, 0.005])
    assert np.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2, 3, 4]], [0.02, 0.04, 0.04, 0.02])
    assert np.isnan(bh_fdr([np.nan])).all() and bh_fdr([]).size == 0


def test_ranksum_matches_scipy_with_ties():
    rng = np.random.default_rng(2)
    bg = rng.integers(0, 20, 300).astype(float)  # many ties, within and across samples
    groups = [rng.integers(3, 25, n).astype(float) for n in (1, 5, 40)]
    vals = np.concatenate(groups)
    codes = np.repeat(np.arange(3), [len(g) for g in groups])
    z, p = ranksum_grouped(bg, vals, codes, 4)
    for k, g in enumerate(groups):
        ref = sps.ranksums(g, bg)
        np.testing.assert_allclose([z[k], p[k]], [ref.statistic, ref.pvalue], rtol=1e-10)
    assert np.isnan(z[3]) and np.isnan(p[3])  # empty group


def test_within_cell_rank_test_hand_computed():
    # cell 0: A=1 B=2 C=3; cell 1: A=5 B=4 C=6. Three genes: scores ndtri(1/4), 0, ndtri(3/4)
    # = -a, 0, a; each cell's null variance 2a^2/3. C: 2a / sqrt(4a^2/3) = sqrt(3).
    values = np.array([1.0, 2.0, 3.0, 5.0, 4.0, 6.0])
    genes = np.array([0, 1, 2, 0, 1, 2])
    cells = np.array([0, 0, 0, 1, 1, 1])
    z, pct = within_cell_rank_test(values, genes, cells, 4)
    np.testing.assert_allclose(z[:3], [-np.sqrt(3) / 2, -np.sqrt(3) / 2, np.sqrt(3)])
    np.testing.assert_allclose(pct[:3], [(0.5 + 1.5) / 6, (1.5 + 0.5) / 6, 2.5 / 3])
    assert np.isnan(z[3]) and np.isnan(pct[3])  # a gene with no values


def test_within_cell_rank_test_matches_a_cell_by_cell_reference_with_ties():
    rng = np.random.default_rng(5)
    gene, cell = np.nonzero(rng.random((25, 12)) < 0.6)
    values = np.round(rng.exponential(size=gene.size), 1)  # many ties
    z, pct = within_cell_rank_test(values, gene, cell, 25)
    ref_z, ref_pct = reference_rank_test(values, gene, cell, 25)
    np.testing.assert_allclose(z, ref_z, rtol=1e-12)
    np.testing.assert_allclose(pct, ref_pct, rtol=1e-12)


def test_within_cell_rank_test_is_standardised_exactly_under_exchangeability():
    """All 4^3 equally likely rank patterns of one gene in 3 cells of 4 genes: mean 0, var 1."""
    zs = []
    for ranks in itertools.product(range(4), repeat=3):
        values = np.tile(np.arange(4.0), 3)
        genes = np.tile(np.arange(1, 5), 3)
        for c, r in enumerate(ranks):  # gene 0 takes rank r + 1 in cell c (its value r)
            genes[4 * c + r] = 0
        zs.append(within_cell_rank_test(values, genes, np.repeat(np.arange(3), 4), 5)[0][0])
    assert np.mean(zs) == pytest.approx(0.0, abs=1e-12)
    assert np.var(zs) == pytest.approx(1.0, rel=1e-12)


def test_within_cell_rank_test_ignores_each_cells_shape_and_scale():
    rng = np.random.default_rng(6)
    gene, cell = np.nonzero(rng.random((30, 15)) < 0.8)
    values = rng.normal(size=gene.size)
    z, pct = within_cell_rank_test(values, gene, cell, 30)
    scale, offset = rng.lognormal(size=15), rng.normal(size=15)
    bent = np.exp(3 * values) * scale[cell] + offset[cell]  # monotone within each cell
    z2, pct2 = within_cell_rank_test(bent, gene, cell, 30)
    np.testing.assert_allclose(z2, z, rtol=1e-12)
    np.testing.assert_allclose(pct2, pct, rtol=1e-12)


def test_mean_t_test_matches_scipy():
    rng = np.random.default_rng(7)
    groups = [rng.normal(0.2, 1, n) for n in (2, 5, 30)] + [np.full(4, 0.5), np.zeros(3)]
    values = np.concatenate(groups)
    codes = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    r = mean_t_test(values, codes, len(groups) + 2)
    for k, g in enumerate(groups[:3]):
        lo, hi = sps.t.interval(0.95, len(g) - 1, loc=g.mean(), scale=sps.sem(g))
        np.testing.assert_allclose([r["ci_low"][k], r["ci_high"][k]], [lo, hi], rtol=1e-12)
        for key, alt in (("p_greater", "greater"), ("p_less", "less")):
            ref = sps.ttest_1samp(g, 0.0, alternative=alt).pvalue
            np.testing.assert_allclose(r[key][k], ref, rtol=1e-10)
    # all equal: certain of the side of a nonzero mean, no evidence at exactly zero
    assert (r["p_greater"][3], r["p_less"][3]) == (0.0, 1.0)
    assert (r["p_greater"][4], r["p_less"][4]) == (1.0, 1.0)
    assert np.isnan(r["mean"][5]) and np.isnan(r["p_greater"][5]) and r["n"][5] == 0
