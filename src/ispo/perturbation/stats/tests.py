"""The statistical tests of the modes: rank-sum against a pooled background (Geneformer's
goal-state test, ``vs_null``), the within-cell rank test and the one-sample t test of the
``paired`` goal-state method, and Benjamini-Hochberg."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.special import ndtr, ndtri


def ranksum_grouped(
    background: np.ndarray,
    values: np.ndarray,
    codes: np.ndarray,
    n_groups: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Wilcoxon rank-sum z and two-sided p of each group of ``values`` vs one ``background``.

    ``codes[i]`` is the group of ``values[i]``. Equal to ``scipy.stats.ranksums(group,
    background)`` per group (midranks for ties, normal approximation, no tie correction): the
    rank sum of a group in (background + group) is the sum over its values of (#background below
    + half #background equal) plus n(n+1)/2 for the ranks within the group. z > 0 means the group
    lies above the background. Groups with no values get NaN.
    """
    bg = np.sort(np.asarray(background, dtype=np.float64))
    values = np.asarray(values, dtype=np.float64)
    lo = np.searchsorted(bg, values, side="left")
    hi = np.searchsorted(bg, values, side="right")
    n1 = float(len(bg))
    n2 = np.bincount(codes, minlength=n_groups).astype(np.float64)
    s = np.bincount(codes, weights=lo + 0.5 * (hi - lo), minlength=n_groups) + n2 * (n2 + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (s - n2 * (n1 + n2 + 1) / 2) / np.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    z[(n2 == 0) | (n1 == 0)] = np.nan
    return z, 2 * ndtr(-np.abs(z))


def bh_fdr(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), in input order.

    NaN p-values stay NaN and are not counted among the tests (``m`` is the number of finite
    p-values). Same as ``scipy.stats.false_discovery_control(p, method="bh")`` without NaNs.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    q = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size == 0:
        return q
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    raw = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(np.minimum.accumulate(raw[::-1])[::-1], 1.0)
    return q


def within_cell_rank_test(
    values: np.ndarray, genes: np.ndarray, cells: np.ndarray, n_genes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per gene: is it ranked higher (or lower) among its cells' genes than chance allows?

    Returns ``(z, percentile)``. ``values[i]`` belongs to gene ``genes[i]`` in cell ``cells[i]``
    (one value per gene and cell). Within each cell the values are ranked (midranks for ties)
    and each rank ``r`` of ``m`` becomes its normal score ``ndtri(r / (m + 1))`` (van der
    Waerden 1952). If a gene's value is exchangeable with its cell's other genes' values (the
    null: the gene is like the cell's other genes), its rank is uniform over the cell's ranks
    *whatever the distribution of the cell's values*: skew, heavy tails, a scale of its own per
    cell change nothing. Its score then has the mean and variance of the cell's scores, exactly,
    and scores of different cells are independent, so ``z`` = (sum of the gene's scores minus
    their null means) / sqrt(sum of the null variances) has mean 0 and variance 1. Normal scores
    make each cell's term nearly normal (exactly so as ``m`` grows), so ``z`` is standard normal
    in the tails too with few cells, where a sum of plain ranks (bounded, lighter-tailed than
    normal) would make small p-values conservative. ``percentile`` is the mean of
    ``(r - 1/2) / m`` over the gene's cells (1/2: like the cell's typical gene). Genes with no
    cell holding two or more values get NaN.
    """
    ranks = pd.Series(values).groupby(cells).rank(method="average").to_numpy()
    n_cells = int(cells.max()) + 1 if cells.size else 0
    m = np.bincount(cells, minlength=n_cells).astype(np.float64)
    score = ndtri(ranks / (m[cells] + 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(cells, weights=score, minlength=n_cells) / m
        var = np.bincount(cells, weights=score**2, minlength=n_cells) / m - mean**2
    var = np.maximum(var, 0.0)  # float rounding below zero in a cell of equal values
    total = np.bincount(genes, weights=score - mean[cells], minlength=n_genes)
    null_var = np.bincount(genes, weights=var[cells], minlength=n_genes)
    n = np.bincount(genes, minlength=n_genes)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(null_var > 0, total / np.sqrt(null_var), np.nan)
        pct = np.bincount(genes, weights=(ranks - 0.5) / m[cells], minlength=n_genes) / n
    return z, np.where(null_var > 0, pct, np.nan)


def mean_t_test(values: np.ndarray, codes: np.ndarray, n_groups: int) -> dict[str, np.ndarray]:
    """Per group: the mean, its 95% t interval and one-sided t-test p-values against zero.

    Keys ``mean``, ``ci_low``, ``ci_high``, ``p_greater``, ``p_less``, ``n``. Groups of fewer
    than two values get NaN intervals and p-values; a group whose values are all equal gets
    p = 0 on the side of its mean (1 on the other; both 1 at exactly zero).
    """
    n = np.bincount(codes, minlength=n_groups).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(codes, weights=values, minlength=n_groups) / n
        dev = values - mean[codes]
        sem = np.sqrt(np.bincount(codes, weights=dev**2, minlength=n_groups) / (n - 1) / n)
        half = sps.t.ppf(0.975, n - 1) * sem
        t = mean / sem
    t[(sem == 0) & (mean == 0)] = 0.0
    p_greater, p_less = sps.t.sf(t, n - 1), sps.t.cdf(t, n - 1)
    p_greater[(sem == 0) & (mean == 0)] = p_less[(sem == 0) & (mean == 0)] = 1.0
    few = n < 2
    for a in (half, p_greater, p_less):
        a[few] = np.nan
    return {
        "mean": mean,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "p_greater": p_greater,
        "p_less": p_less,
        "n": n.astype(np.int64),
    }
