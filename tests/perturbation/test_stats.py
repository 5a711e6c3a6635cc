"""Perturbation statistics: planted effects are found, numbers match hand-computed values."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sklearn.mixture
from scipy import stats as sps

from ispo.errors import IspoError
from ispo.perturbation.stats import bh_fdr, perturb_stats, ranksum_grouped, write_stats

STATES = {"state_key": "disease", "start_state": "dcm", "goal_state": "nf", "alt_states": ["hcm"]}


def gid(i: int) -> str:
    return f"ENSG{i:011d}"


def make_results(
    n_genes=30, n_cells=40, planted=(7,), shift=0.05, seed=0, states=True, cos_drop=0.0
):
    """Long table: every gene perturbed in every cell; shifts ~ N(0, 0.01), planted genes +shift.

    ``cos_drop`` lowers the planted genes' ``cos_sim`` (stronger effect) by that much.
    """
    rng = np.random.default_rng(seed)
    gene = np.repeat(np.arange(n_genes), n_cells)
    cell = np.tile(np.arange(n_cells), n_genes)
    hit = np.isin(gene, planted)
    df = pd.DataFrame(
        {
            "cell_id": [f"cell{c}" for c in cell],
            "obs_index": cell.astype(np.int64),
            "perturbed_ids": [gid(g) for g in gene],
            "perturbed_symbols": [f"G{g}" for g in gene],
            "perturb_type": "delete",
            "n_genes": 500,
            "cos_sim": (0.99 + rng.normal(0, 0.002, gene.size) - cos_drop * hit).astype(np.float32),
            "cell_cos_sim": (0.999 + rng.normal(0, 0.0005, gene.size)).astype(np.float32),
        }
    )
    if states:
        df["shift_nf"] = (rng.normal(0, 0.01, gene.size) + shift * hit).astype(np.float32)
        df["shift_hcm"] = rng.normal(0, 0.01, gene.size).astype(np.float32)
        df.attrs["cell_states"] = dict(STATES)
    return df


# ------------------------------------------------------------------------------ primitives


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


# ------------------------------------------------------------------------------ goal state


def test_goal_state_shift_finds_only_the_planted_gene():
    out = perturb_stats(make_results(), mode="goal_state_shift", method="geneformer")
    assert out["perturbed_ids"].iloc[0] == gid(7)
    assert out["perturbed_symbols"].iloc[0] == "G7"
    assert out["significant"].sum() == 1 and out["significant"].iloc[0]
    assert out["goal_fdr"].iloc[0] < 1e-6
    np.testing.assert_allclose(out["shift_to_goal"].iloc[0], 0.05, atol=0.005)
    assert (out["n_detections"] == 40).all()
    # the alt state (defaulted from the run's cell states) has no planted effect
    for col in ("shift_to_hcm", "hcm_pval", "hcm_fdr"):
        assert col in out.columns
    assert (out["hcm_fdr"] > 0.05).all()
    # the goal p-values are each gene vs all genes pooled
    df = make_results()
    pooled = df["shift_nf"].to_numpy(np.float64)
    g3 = df.loc[df["perturbed_ids"] == gid(3), "shift_nf"].to_numpy(np.float64)
    np.testing.assert_allclose(
        out.set_index("perturbed_ids").loc[gid(3), "goal_pval"],
        sps.ranksums(g3, pooled).pvalue,
        rtol=1e-10,
    )
    # sorted by FDR, then by shift (descending)
    assert out["goal_fdr"].is_monotonic_increasing
    info = out.attrs["ispo_stats"]
    assert info["goal_state"] == "nf" and info["alt_states"] == ["hcm"]


def test_goal_state_shift_explicit_states_and_background_subsample():
    df = make_results()
    df.attrs = {}
    out = perturb_stats(
        df,
        mode="goal_state_shift",
        method="geneformer",
        goal_state="nf",
        alt_states=[],
        max_background=300,
        seed=3,
    )
    assert not any(c.startswith("hcm") for c in out.columns)
    assert out["perturbed_ids"].iloc[0] == gid(7) and out["significant"].sum() == 1
    again = perturb_stats(
        df,
        mode="goal_state_shift",
        method="geneformer",
        goal_state="nf",
        alt_states=[],
        max_background=300,
        seed=3,
    )
    pd.testing.assert_frame_equal(out, again)  # seeded subsample: reproducible
    other = perturb_stats(
        df,
        mode="goal_state_shift",
        method="geneformer",
        goal_state="nf",
        alt_states=[],
        max_background=300,
        seed=4,
    )
    assert not np.allclose(
        out.sort_values("perturbed_ids")["goal_pval"],
        other.sort_values("perturbed_ids")["goal_pval"],
    )


def test_goal_state_shift_alt_state_with_effect():
    df = make_results()
    df.loc[df["perturbed_ids"] == gid(2), "shift_hcm"] -= 0.05
    out = perturb_stats(df, mode="goal_state_shift", method="geneformer").set_index("perturbed_ids")
    assert out.loc[gid(2), "hcm_fdr"] < 1e-6 and out.loc[gid(2), "shift_to_hcm"] < -0.04
    assert (out.drop(index=gid(2))["hcm_fdr"] > 0.05).all()


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


# ------------------------------------------------------------------------------ files


def test_reads_parquet_with_run_metadata(tmp_path):
    df = make_results()
    meta = {"cell_states": STATES}
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(
        {**table.schema.metadata, b"ispo": json.dumps(meta).encode()}
    )
    path = tmp_path / "res.parquet"
    pq.write_table(table, path)
    out = perturb_stats(path, mode="goal_state_shift", method="geneformer")
    assert out["perturbed_ids"].iloc[0] == gid(7) and "hcm_fdr" in out.columns
    # metadata only in a JSON file beside the Parquet
    df.attrs = {}
    bare = tmp_path / "bare.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), bare)
    (tmp_path / "bare.json").write_text(json.dumps(meta))
    out2 = perturb_stats(str(bare), mode="goal_state_shift", method="geneformer")
    pd.testing.assert_frame_equal(out, out2)


@pytest.mark.parametrize("name", ["stats.csv", "stats.tsv", "stats.parquet"])
def test_write_stats_round_trip(tmp_path, name):
    out = perturb_stats(make_results(), mode="goal_state_shift", method="geneformer")
    path = write_stats(out, tmp_path / name)
    back = (
        pd.read_parquet(path)
        if name.endswith(".parquet")
        else pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",")
    )
    assert list(back.columns) == list(out.columns)
    np.testing.assert_allclose(back["goal_fdr"], out["goal_fdr"])
    assert list(back["perturbed_ids"]) == list(out["perturbed_ids"])
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left
    write_stats(out.head(3), path)  # replaces
    assert (
        len(
            pd.read_parquet(path)
            if name.endswith(".parquet")
            else pd.read_csv(path, sep=None, engine="python")
        )
        == 3
    )


# ------------------------------------------------------------------------------ errors


def test_errors(tmp_path):
    df = make_results()
    bare = make_results(states=False)
    cases = [
        (lambda: perturb_stats(df, mode="nope"), "unknown mode"),
        (
            lambda: perturb_stats(df.drop(columns="perturbed_ids"), mode="aggregate"),
            "perturbed_ids",
        ),
        (lambda: perturb_stats(df.drop(columns="cos_sim"), mode="aggregate"), "cos_sim"),
        (lambda: perturb_stats(df.iloc[:0], mode="aggregate"), "empty"),
        (lambda: perturb_stats(df, mode="vs_null"), "--null"),
        (lambda: perturb_stats(df, mode="vs_null", null=df.iloc[:0]), "null table is empty"),
        (
            lambda: perturb_stats(
                df, mode="vs_null", null=bare.drop(columns="shift_nf", errors="ignore")
            ),
            "shift_nf",
        ),
        (lambda: perturb_stats(bare, mode="goal_state_shift", method="geneformer"), "--goal-state"),
        (
            lambda: perturb_stats(
                bare, mode="goal_state_shift", method="geneformer", goal_state="nf"
            ),
            "shift_nf",
        ),
        (
            lambda: perturb_stats(
                df, mode="goal_state_shift", method="geneformer", alt_states=["ipf"]
            ),
            "'ipf'",
        ),
        (
            lambda: perturb_stats(
                df, mode="goal_state_shift", method="geneformer", alt_states=["goal"]
            ),
            "clash",
        ),
        (lambda: perturb_stats(df, mode="aggregate_gene_shifts"), "--gene-table"),
        (
            lambda: perturb_stats(
                df, mode="aggregate_gene_shifts", gene_table=pd.DataFrame({"perturbed_ids": ["A"]})
            ),
            "affected_id",
        ),
        (
            lambda: perturb_stats(df[df["perturbed_ids"] == gid(1)], mode="mixture_model"),
            "at least 2 genes",
        ),
        (lambda: perturb_stats(df, mode="mixture_model", n_components=1), "n_components"),
        (lambda: perturb_stats(df, mode="aggregate", fdr_alpha=1.5), "fdr_alpha"),
        (
            lambda: perturb_stats(
                df, mode="goal_state_shift", method="geneformer", max_background=0
            ),
            "max_background",
        ),
        (lambda: perturb_stats(tmp_path / "missing.parquet", mode="aggregate"), "does not exist"),
        (lambda: write_stats(df, tmp_path / "stats.xlsx"), ".csv"),
        (lambda: write_stats(df, tmp_path / "no" / "stats.csv"), "does not exist"),
    ]
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    cases.append((lambda: perturb_stats(junk, mode="aggregate"), "cannot read"))
    for fn, words in cases:
        with pytest.raises(IspoError, match=words) as info:
            fn()
        assert "\n" not in str(info.value) and ":" in str(info.value)
