"""The statistical tests the modes share: rank-sum against a pooled background,
Benjamini-Hochberg, and the one-sided signed-rank test of the paired goal-state method."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy.special import ndtr


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


#: Largest group size whose signed-rank p-values come from the exact null distribution.
EXACT_MAX_N = 50


@functools.cache
def _signed_rank_sf() -> np.ndarray:
    """``sf[n, w] = P(W+ >= w)`` for ``n`` untied nonzero differences under the null.

    W+ of n differences is the sum of a random subset of the ranks 1..n; the number of subsets
    with each sum follows from adding the ranks one at a time (counts stay exact in float64).
    """
    top = EXACT_MAX_N * (EXACT_MAX_N + 1) // 2
    counts = np.zeros(top + 1)
    counts[0] = 1.0
    sf = np.zeros((EXACT_MAX_N + 1, top + 2))
    sf[0, 0] = 1.0
    for n in range(1, EXACT_MAX_N + 1):
        counts = counts + np.concatenate([np.zeros(n), counts[:-n]])
        sf[n, : top + 1] = np.cumsum((counts / 2.0**n)[::-1])[::-1]
    return sf


def signed_rank_grouped(
    values: np.ndarray, codes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-sided Wilcoxon signed-rank p-values of each group of ``values`` against zero.

    Returns ``(p_greater, p_less, n_used)``. Zeros are dropped (Wilcoxon's convention, scipy's
    ``zero_method="wilcox"``); ranks of ``|values|`` are taken within each group, midranks for
    ties. A group with at most :data:`EXACT_MAX_N` values and no ties uses the exact null
    distribution (``scipy.stats.wilcoxon(method="exact")``); otherwise the normal approximation
    with the tie correction and no continuity correction (scipy's ``method="asymptotic"``).
    Groups with no nonzero value get NaN.
    """
    keep = values != 0
    v, c = np.asarray(values, np.float64)[keep], np.asarray(codes)[keep]
    a = np.abs(v)
    order = np.lexsort((a, c))
    a_s, c_s, pos_s = a[order], c[order], v[order] > 0
    if a_s.size == 0:
        nan = np.full(n_groups, np.nan)
        return nan, nan.copy(), np.zeros(n_groups, np.int64)
    idx = np.arange(a_s.size)
    new_group = np.r_[True, c_s[1:] != c_s[:-1]]
    new_run = new_group | np.r_[True, a_s[1:] != a_s[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, idx, 0))
    run_start = np.flatnonzero(new_run)
    run_len = np.diff(np.r_[run_start, a_s.size]).astype(np.float64)
    run_rank = (run_start - group_start[run_start]) + (run_len + 1) / 2
    ranks = run_rank[np.cumsum(new_run) - 1]
    n = np.bincount(c_s, minlength=n_groups).astype(np.float64)
    w_plus = np.bincount(c_s, weights=ranks * pos_s, minlength=n_groups)
    ties = np.bincount(c_s[run_start], weights=run_len**3 - run_len, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(n * (n + 1) * (2 * n + 1) / 24 - ties / 48)
        z = (w_plus - n * (n + 1) / 4) / sd
    p_greater, p_less = ndtr(-z), ndtr(z)
    exact = (n <= EXACT_MAX_N) & (ties == 0) & (n > 0)
    if exact.any():
        sf = _signed_rank_sf()
        ne, we = n[exact].astype(np.intp), np.rint(w_plus[exact]).astype(np.intp)
        p_greater[exact] = sf[ne, we]
        p_less[exact] = sf[ne, ne * (ne + 1) // 2 - we]
    p_greater[n == 0] = p_less[n == 0] = np.nan
    return p_greater, p_less, n.astype(np.int64)
