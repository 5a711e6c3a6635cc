"""``mixture_model``: a seeded Gaussian mixture on each gene's mean impact (mean shift toward the
goal, else 1 - mean ``cos_sim``). Components are ordered by their means here (Geneformer
assumes sklearn's component 0 is the lower one; it need not be)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ispo.errors import IspoError
from ispo.perturbation.stats.inputs import ID, finite, gene_codes, group_mean, value_column
from ispo.perturbation.stats.options import Run


def mixture_table(df: pd.DataFrame, value: str, *, n_components: int, seed: int) -> pd.DataFrame:
    """Each gene's component (0 = lowest mean impact) and whether it is in the impact component.

    Geneformer's border rule is kept: a gene beyond the outermost component means belongs to
    that side whatever the mixture says.
    """
    from sklearn.mixture import GaussianMixture

    codes, out = gene_codes(df)
    v, c = finite(df[value], codes)
    mean, n = group_mean(v, c, len(out))
    impact = mean if value.startswith("shift_") else 1.0 - mean
    out = out.assign(n_cells=n, value_mean=mean, impact=impact)
    fit = ~np.isnan(impact)
    x = impact[fit].reshape(-1, 1)
    if len(np.unique(x)) < n_components:
        raise IspoError(
            f"mixture_model needs at least {n_components} genes with distinct mean "
            f"values, got {len(np.unique(x))}: perturb more genes or use another mode"
        )
    gm = GaussianMixture(n_components=n_components, random_state=seed).fit(x)
    means = gm.means_.ravel()
    order = np.argsort(means, kind="stable")  # order[0]: lowest mean, order[-1]: highest
    rank = np.empty(n_components, dtype=np.int64)
    rank[order] = np.arange(n_components)
    top, bottom = order[-1], order[0]
    prob = gm.predict_proba(x)[:, top]
    component = rank[gm.predict(x)]
    # Geneformer's border rule: beyond the outer component means, the side decides
    is_impact = component == n_components - 1
    is_impact[x[:, 0] >= means[top]] = True
    is_impact[x[:, 0] <= means[bottom]] = False
    comp_col = np.full(len(out), -1, dtype=np.int64)
    comp_col[fit] = component
    imp_col = np.zeros(len(out), dtype=bool)
    imp_col[fit] = is_impact
    prob_col = np.full(len(out), np.nan)
    prob_col[fit] = prob
    out = out.assign(component=comp_col, impact_component=imp_col, impact_probability=prob_col)
    out.attrs["component_means"] = [float(m) for m in means[order]]
    return out.sort_values(
        ["impact_component", "impact_probability", "impact", ID],
        ascending=[False, False, False, True],
        kind="mergesort",
        na_position="last",
    )


def run_mixture_model(run: Run) -> tuple[pd.DataFrame, dict]:
    """The mode's table and what :func:`ispo.perturb_stats` records about it."""
    value = value_column(run.df, run.goal)
    k = run.opts.n_components
    out = mixture_table(run.df, value, n_components=k, seed=run.opts.seed)
    return out, {
        "value": value,
        "impact": value if value != "cos_sim" else "1 - mean cos_sim",
        "n_components": k,
        "component_means": out.attrs.pop("component_means"),
    }
