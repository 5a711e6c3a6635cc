"""The other statistics modes: aggregate, vs_null, mixture_model, aggregate_gene_shifts."""

import numpy as np
import pandas as pd
import pytest
import sklearn.mixture
from scipy import stats as sps
from stats_support import gid, make_results

from ispo.perturbation.stats import perturb_stats

# ------------------------------------------------------------------------------ aggregate


def test_aggregate_hand_computed():
    df = pd.DataFrame(
        {
            "perturbed_ids": ["A", "A", "A", "B", "B"],
            "perturbed_symbols": ["a", "a", "a", "b", "b"],
            "cos_sim": np.array([0.9, 0.8, 0.4, 0.95, 0.99], np.float32),
            "cell_cos_sim": np.array([1.0, 0.5, 0.0, 0.2, 0.4], np.float32),
            "shift_nf": np.array([0.1, 0.2, 0.3, 0.0, 0.0], np.float32),
        }
    )
    out = perturb_stats(df, mode="aggregate")
    assert list(out["perturbed_ids"]) == ["A", "B"]  # lower mean cos_sim first
    assert list(out["perturbed_symbols"]) == ["a", "b"]
    a, b = out.iloc[0], out.iloc[1]
    assert a["n_cells"] == 3 and b["n_cells"] == 2
    np.testing.assert_allclose(a["cos_sim_mean"], 0.7, rtol=1e-6)
    np.testing.assert_allclose(a["cos_sim_median"], 0.8, rtol=1e-6)
    np.testing.assert_allclose(a["cos_sim_std"], np.std([0.9, 0.8, 0.4]), rtol=1e-6)
    np.testing.assert_allclose(a["cell_cos_sim_mean"], 0.5, rtol=1e-6)
    np.testing.assert_allclose(a["shift_nf_mean"], 0.2, rtol=1e-6)
    np.testing.assert_allclose(b["cos_sim_mean"], 0.97, rtol=1e-6)
    np.testing.assert_allclose(b["cos_sim_median"], 0.97, rtol=1e-6)
    assert out.attrs["ispo_stats"]["mode"] == "aggregate"
    # Geneformer's name for the mode is accepted
    pd.testing.assert_frame_equal(perturb_stats(df, mode="aggregate_data"), out)


def test_aggregate_puts_planted_gene_first():
    out = perturb_stats(make_results(cos_drop=0.05, states=False), mode="aggregate")
    assert out["perturbed_ids"].iloc[0] == gid(7) and len(out) == 30
    assert (out["n_cells"] == 40).all()


# ------------------------------------------------------------------------------ vs null


def test_vs_null_finds_planted_gene():
    test = make_results(seed=0)
    null = make_results(seed=1, shift=0.0)
    out = perturb_stats(test, mode="vs_null", null=null)
    assert out.attrs["ispo_stats"]["value"] == "shift_nf"
    assert out["perturbed_ids"].iloc[0] == gid(7)
    assert out["significant"].sum() == 1
    row = out.iloc[0]
    assert row["n_test"] == 40 and row["n_null"] == 40 and row["note"] == ""
    np.testing.assert_allclose(row["mean_test"] - row["mean_null"], 0.05, atol=0.01)
    ref = sps.ranksums(
        test.loc[test["perturbed_ids"] == gid(7), "shift_nf"].astype(float),
        null.loc[null["perturbed_ids"] == gid(7), "shift_nf"].astype(float),
    )
    np.testing.assert_allclose(row["pval"], ref.pvalue, rtol=1e-10)


def test_vs_null_cos_sim_and_gene_absent_from_null(recwarn):
    test = make_results(cos_drop=0.01, states=False)
    null = make_results(seed=1, states=False)
    null = null[null["perturbed_ids"] != gid(5)]
    out = perturb_stats(test, mode="vs_null", null=null)
    assert out.attrs["ispo_stats"]["value"] == "cos_sim"
    assert out["perturbed_ids"].iloc[0] == gid(7) and out["significant"].sum() == 1
    absent = out.set_index("perturbed_ids").loc[gid(5)]
    assert np.isnan(absent["pval"]) and np.isnan(absent["fdr"]) and not absent["significant"]
    assert absent["note"] == "absent from null" and absent["n_null"] == 0
    assert out["perturbed_ids"].iloc[-1] == gid(5)  # NaN FDR last
    assert len(recwarn) == 0


# ------------------------------------------------------------------------------ mixture


class ReversedMixture(sklearn.mixture.GaussianMixture):
    """sklearn's mixture with its components listed in reverse order after fitting."""

    def fit(self, X, y=None):
        super().fit(X, y)
        for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
            setattr(self, name, getattr(self, name)[::-1].copy())
        return self


@pytest.mark.parametrize("reverse", [False, True], ids=["sklearn-order", "reversed"])
def test_mixture_model_finds_planted_genes(monkeypatch, reverse):
    if reverse:
        monkeypatch.setattr(sklearn.mixture, "GaussianMixture", ReversedMixture)
    planted = (3, 11, 20)
    df = make_results(planted=planted, cos_drop=0.08, states=False)
    hits = {gid(i) for i in planted}
    for seed in range(5):
        out = perturb_stats(df, mode="mixture_model", seed=seed)
        assert set(out.loc[out["impact_component"], "perturbed_ids"]) == hits
        assert set(out["perturbed_ids"].iloc[:3]) == hits
        assert (out.loc[out["impact_component"], "impact_probability"] > 0.99).all()
        assert (out.loc[~out["impact_component"], "impact_probability"] < 0.01).all()
        assert set(out.loc[out["component"] == 1, "perturbed_ids"]) == hits
        info = out.attrs["ispo_stats"]
        assert info["impact"] == "1 - mean cos_sim"
        assert info["component_means"][0] < info["component_means"][1]


def test_mixture_model_on_goal_shift():
    planted = (1, 2, 4)
    out = perturb_stats(make_results(planted=planted, shift=0.05), mode="mixture_model")
    assert out.attrs["ispo_stats"]["value"] == "shift_nf"
    assert set(out.loc[out["impact_component"], "perturbed_ids"]) == {gid(i) for i in planted}


# ------------------------------------------------------------------------------ gene shifts


def test_aggregate_gene_shifts_tiny():
    results = pd.DataFrame(
        {"perturbed_ids": ["A", "B"], "perturbed_symbols": ["a", "b"], "cos_sim": [0.9, 0.9]}
    )
    genes = pd.DataFrame(
        {
            "cell_id": ["c0", "c1", "c0", "c1", "c0"],
            "obs_index": [0, 1, 0, 1, 0],
            "perturbed_ids": ["A", "A", "A", "A", "B"],
            "affected_id": ["X", "X", "Y", "Y", "X"],
            "affected_symbol": ["x", "x", "y", "y", "x"],
            "cos_sim": np.array([0.8, 0.6, 0.99, 0.97, 0.5], np.float32),
        }
    )
    out = perturb_stats(results, mode="aggregate_gene_shifts", gene_table=genes)
    assert list(out.columns) == [
        "perturbed_ids",
        "perturbed_symbols",
        "affected_id",
        "affected_symbol",
        "cos_sim_mean",
        "cos_sim_std",
        "n_cells",
    ]
    assert list(zip(out["perturbed_ids"], out["affected_id"])) == [
        ("B", "X"),
        ("A", "X"),
        ("A", "Y"),
    ]
    assert list(out["perturbed_symbols"]) == ["b", "a", "a"]
    assert list(out["affected_symbol"]) == ["x", "x", "y"]
    np.testing.assert_allclose(out["cos_sim_mean"], [0.5, 0.7, 0.98], rtol=1e-6)
    np.testing.assert_allclose(out["cos_sim_std"], [0.0, 0.1, 0.01], rtol=1e-5, atol=1e-7)
    assert list(out["n_cells"]) == [1, 2, 2]
