"""Perturbation statistics: planted effects are found, numbers match hand-computed values."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sklearn.mixture
from scipy import stats as sps

from ispo.cli.main import main
from ispo.errors import IspoError
from ispo.perturbation.plots import volcano_points
from ispo.perturbation.stats import perturb_stats, write_stats
from ispo.perturbation.stats.tests import (
    EXACT_MAX_N,
    bh_fdr,
    ranksum_grouped,
    signed_rank_grouped,
)

STATES = {"state_key": "disease", "start_state": "dcm", "goal_state": "nf", "alt_states": ["hcm"]}


def gid(i: int) -> str:
    return f"ENSG{i:011d}"


def rows_of(cell, gene, symbols, **values):
    """A results table like the engine's: one row per (cell, deleted gene), then ``values``."""
    base = {
        "cell_id": [f"cell{c}" for c in cell],
        "obs_index": np.asarray(cell, np.int64),
        "perturbed_ids": [gid(g) for g in gene],
        "perturbed_symbols": symbols,
        "perturb_type": "delete",
        "n_genes": 500,
    }
    return pd.DataFrame({**base, **values})


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
    df = rows_of(
        cell,
        gene,
        [f"G{g}" for g in gene],
        cos_sim=(0.99 + rng.normal(0, 0.002, gene.size) - cos_drop * hit).astype(np.float32),
        cell_cos_sim=(0.999 + rng.normal(0, 0.0005, gene.size)).astype(np.float32),
    )
    if states:
        df["shift_nf"] = (rng.normal(0, 0.01, gene.size) + shift * hit).astype(np.float32)
        df["shift_hcm"] = rng.normal(0, 0.01, gene.size).astype(np.float32)
        df.attrs["cell_states"] = dict(STATES)
    return df


EFFECT = 0.015  # planted shift toward (or away from) the goal; per-value noise sd is 0.01
KINDS = ["toward"] * 10 + ["away"] * 10 + ["single"] * 20 + ["null"] * 260


def planted(seed=0, n_cells=40, offset_sd=0.01, kinds=KINDS, p_detect=0.7):
    """Start cells with a per-cell offset shared by all their genes (their distance to the goal).

    Genes: 10 move cells toward the goal (+EFFECT), 10 away (-EFFECT), 20 are seen in one cell
    only (where they move it 3 x EFFECT toward the goal), the rest are null. Every other gene is
    seen in each cell with probability ``p_detect``. Returns the results table and each gene's
    kind (indexed by gene id).
    """
    rng = np.random.default_rng(seed)
    kinds = np.asarray(kinds)
    detect = rng.random((kinds.size, n_cells)) < p_detect
    single = kinds == "single"
    detect[single] = False
    detect[single, rng.integers(0, n_cells, single.sum())] = True
    gene, cell = np.nonzero(detect)
    offset = rng.normal(0, offset_sd, n_cells)
    effect = np.select(
        [kinds == "toward", kinds == "away", single], [EFFECT, -EFFECT, 3 * EFFECT], 0.0
    )
    shift = offset[cell] + effect[gene] + rng.normal(0, 0.01, gene.size)
    df = rows_of(
        cell,
        gene,
        [f"{kinds[g]}{g}" for g in gene],
        cos_sim=np.float32(0.99),
        shift_nf=shift.astype(np.float32),
    )
    df.attrs["cell_states"] = {**STATES, "alt_states": []}
    return df, pd.Series(kinds, index=[gid(g) for g in range(kinds.size)])


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


def test_signed_rank_matches_scipy_exact_and_asymptotic():
    rng = np.random.default_rng(3)
    groups = [rng.normal(0.3, 1, n) for n in (1, 3, 10, EXACT_MAX_N, EXACT_MAX_N + 1, 200)]
    groups += [np.round(rng.normal(0.2, 1, n), 1) for n in (20, 80)]  # ties: normal approx
    groups.append(np.array([0.0, 0.5, -0.2, 0.0, 0.9, 1.1]))  # zeros are dropped
    vals = np.concatenate(groups)
    codes = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    p_up, p_down, n = signed_rank_grouped(vals, codes, len(groups) + 1)
    for k, g in enumerate(groups):
        nz = g[g != 0]
        exact = nz.size <= EXACT_MAX_N and np.unique(np.abs(nz)).size == nz.size
        method = "exact" if exact else "asymptotic"
        for alt, p in (("greater", p_up[k]), ("less", p_down[k])):
            ref = sps.wilcoxon(g, alternative=alt, method=method).pvalue
            np.testing.assert_allclose(p, ref, rtol=1e-10, err_msg=f"group {k} {alt}")
        assert n[k] == nz.size
    assert np.isnan(p_up[-1]) and np.isnan(p_down[-1]) and n[-1] == 0  # empty group


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
    how = {"mode": "goal_state_shift", "method": "geneformer", "goal_state": "nf"}
    how.update(alt_states=[], max_background=300)
    out = perturb_stats(df, **how, seed=3)
    assert not any(c.startswith("hcm") for c in out.columns)
    assert out["perturbed_ids"].iloc[0] == gid(7) and out["significant"].sum() == 1
    again = perturb_stats(df, **how, seed=3)
    pd.testing.assert_frame_equal(out, again)  # seeded subsample: reproducible
    other = perturb_stats(df, **how, seed=4)
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


def by_kind(out, kinds, column):
    """How many genes of each planted kind have ``column`` true."""
    kind = out["perturbed_ids"].map(kinds)
    return {k: int(out.loc[kind == k, column].sum()) for k in ("toward", "away", "single", "null")}


def test_paired_finds_toward_genes_and_reports_away_genes_apart():
    df, kinds = planted()
    out = perturb_stats(df, mode="goal_state_shift")
    assert out.attrs["ispo_stats"]["method"] == "paired"
    toward = by_kind(out, kinds, "toward_goal")
    assert toward["toward"] >= 8 and toward["away"] == 0 and toward["single"] == 0
    away = by_kind(out, kinds, "away_from_goal")
    assert away["away"] >= 8 and away["toward"] == 0 and away["single"] == 0
    assert toward["null"] <= 2  # the rate over many runs: test_paired_keeps_null_genes_near...
    # genes seen in one cell are listed, not tested, and not counted in the FDR correction
    kind = out["perturbed_ids"].map(kinds)
    single = out[kind == "single"]
    assert len(single) == 20 and (single["n_detections"] == 1).all()
    assert not single["tested"].any() and single["goal_toward_fdr"].isna().all()
    assert (out.loc[kind != "single", "tested"]).all()
    info = out.attrs["ispo_stats"]
    assert info["min_cells"] == 10 and info["n_tested"] == 280 and info["n_untested"] == 20
    tested = out[out["tested"]]
    for side in ("toward", "away"):
        np.testing.assert_allclose(
            tested[f"goal_{side}_fdr"],
            sps.false_discovery_control(tested[f"goal_{side}_pval"], method="bh"),
        )
    # toward-goal hits first, strongest (smallest FDR) first; untested genes last
    n_hits = int(out["toward_goal"].sum())
    assert out["toward_goal"].iloc[:n_hits].all()
    assert out["goal_toward_fdr"].iloc[:n_hits].is_monotonic_increasing
    assert not out["tested"].iloc[-20:].any()
    # the effect interval covers the planted effect for most planted genes
    for k, sign in (("toward", 1), ("away", -1)):
        rows = out[kind == k]
        covers = (rows["goal_effect_ci95_low"] < sign * EFFECT) & (
            sign * EFFECT < rows["goal_effect_ci95_high"]
        )
        assert covers.sum() >= 8 and (np.sign(rows["goal_effect"]) == sign).all()


def test_paired_equals_a_direct_computation():
    df, _ = planted(seed=4)
    out = perturb_stats(df, mode="goal_state_shift").set_index("perturbed_ids")
    v = df["shift_nf"].astype(np.float64)
    centred = v - v.groupby(df["obs_index"]).transform("median")
    for gene, d in centred.groupby(df["perturbed_ids"]):
        row = out.loc[gene]
        assert row["n_detections"] == len(d)
        np.testing.assert_allclose(row["shift_to_goal"], v[d.index].mean(), rtol=1e-12)
        np.testing.assert_allclose(row["goal_effect"], d.mean(), rtol=1e-12)
        if len(d) < 10:
            assert not row["tested"] and np.isnan(row["goal_toward_pval"])
            continue
        nz = d[d != 0].to_numpy()
        exact = nz.size <= EXACT_MAX_N and np.unique(np.abs(nz)).size == nz.size
        method = "exact" if exact else "asymptotic"
        for side, alt in (("toward", "greater"), ("away", "less")):
            ref = sps.wilcoxon(d, alternative=alt, method=method).pvalue
            np.testing.assert_allclose(row[f"goal_{side}_pval"], ref, rtol=1e-10)
        lo, hi = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
        np.testing.assert_allclose(
            [row["goal_effect_ci95_low"], row["goal_effect_ci95_high"]], [lo, hi], rtol=1e-10
        )


def test_paired_keeps_null_genes_near_the_nominal_fdr():
    fdp, p_up, p_down = {"toward": [], "away": []}, [], []
    for seed in range(10):
        df, kinds = planted(seed=seed)
        out = perturb_stats(df, mode="goal_state_shift")
        for side, column in (("toward", "toward_goal"), ("away", "away_from_goal")):
            hits = out["perturbed_ids"][out[column]].map(kinds)
            fdp[side].append((hits != side).mean() if len(hits) else 0.0)
        null_df, _ = planted(seed=100 + seed, kinds=["null"] * 300)
        null = perturb_stats(null_df, mode="goal_state_shift")
        p_up.append(null["goal_toward_pval"])
        p_down.append(null["goal_away_pval"])
    for side in fdp:  # nominal 0.05; the mean of 10 runs (100 runs: 0.050)
        assert np.mean(fdp[side]) <= 0.1, side
    # without planted genes, p-values are uniform: about 5% below 0.05 in each direction
    for p in (pd.concat(p_up), pd.concat(p_down)):
        assert 0.03 <= (p < 0.05).mean() <= 0.075


def test_geneformer_method_flags_away_genes_and_far_cells():
    """The documented difference: Geneformer's two-sided pooled test on the same tables."""
    df, kinds = planted()
    gf = perturb_stats(df, mode="goal_state_shift", method="geneformer")
    flagged = by_kind(gf, kinds, "significant")
    assert flagged["away"] >= 8  # two-sided: moving away counts as much as moving toward
    assert by_kind(perturb_stats(df, mode="goal_state_shift"), kinds, "toward_goal")["away"] == 0
    # null genes seen only in the cells farthest along (largest offset) look like hits when all
    # shifts are pooled, not when each is compared with the other genes of its own cell
    df, kinds = planted(offset_sd=0.03)
    offset = df["shift_nf"].groupby(df["obs_index"]).median()
    far = offset.sort_values().index[-12:]
    rng = np.random.default_rng(9)
    extra = pd.DataFrame(
        [
            {
                **df.iloc[0].to_dict(),
                "cell_id": f"cell{c}",
                "obs_index": c,
                "perturbed_ids": f"FAR{g}",
                "perturbed_symbols": f"far{g}",
                "shift_nf": np.float32(offset[c] + rng.normal(0, 0.01)),
            }
            for g in range(10)
            for c in far
        ]
    )
    both = pd.concat([df, extra], ignore_index=True)
    both.attrs = df.attrs
    is_far = both["perturbed_ids"].drop_duplicates().str.startswith("FAR")
    kinds = pd.concat([kinds, pd.Series("far", index=[f"FAR{g}" for g in range(10)])])
    gf = perturb_stats(both, mode="goal_state_shift", method="geneformer")
    paired = perturb_stats(both, mode="goal_state_shift")
    assert is_far.sum() == 10
    assert gf.loc[gf["perturbed_ids"].map(kinds) == "far", "significant"].sum() >= 8
    assert not paired.loc[paired["perturbed_ids"].map(kinds) == "far", "toward_goal"].any()


def test_geneformer_method_equals_its_reference_with_geneformer_columns():
    """InSilicoPerturberStats' goal_state_shift written independently with scipy."""
    df, _ = planted(seed=2)
    out = perturb_stats(df, mode="goal_state_shift", method="geneformer", columns="geneformer")
    pooled = df["shift_nf"].to_numpy(np.float64)
    rows = []
    for gene, g in df.groupby("perturbed_ids", sort=False):
        values = g["shift_nf"].to_numpy(np.float64)
        rows.append(
            {
                "Gene_name": g["perturbed_symbols"].iloc[0],
                "Ensembl_ID": gene,
                "Shift_to_goal_end": values.mean(),
                "Goal_end_vs_random_pval": sps.ranksums(pooled, values).pvalue,
                "N_Detections": len(values),
            }
        )
    ref = pd.DataFrame(rows)
    ref.insert(
        4, "Goal_end_FDR", sps.false_discovery_control(ref["Goal_end_vs_random_pval"], method="bh")
    )
    ref["Sig"] = (ref["Goal_end_FDR"] < 0.05).astype(np.int64)
    ref = ref.sort_values(
        ["Sig", "Shift_to_goal_end", "Goal_end_FDR"], ascending=[False, False, True]
    ).reset_index(drop=True)
    assert list(out.columns) == list(ref.columns)
    assert out["Sig"].sum() > 0 and out["Sig"].iloc[0] == 1
    pd.testing.assert_frame_equal(out, ref, check_dtype=False, rtol=1e-12)
    assert out.attrs["ispo_stats"]["columns"] == "geneformer"


def test_paired_needs_several_genes_per_cell():
    df, _ = planted()
    # one perturbation per cell, as with a gene set perturbed together
    one = df.drop_duplicates("obs_index").assign(perturbed_ids=gid(0))
    with pytest.raises(IspoError, match="single perturbation"):
        perturb_stats(one, mode="goal_state_shift", goal_state="nf", min_cells=2)
    out = perturb_stats(one, mode="goal_state_shift", goal_state="nf", method="geneformer")
    assert len(out) == 1 and out["n_detections"].iloc[0] == len(one)


def test_volcano_points_split_toward_and_away():
    df, _ = planted()
    for method in ("paired", "geneformer"):
        for columns in ("ispo", "geneformer"):
            out = perturb_stats(df, mode="goal_state_shift", method=method, columns=columns)
            pts = volcano_points(out)
            assert len(pts) == (280 if method == "paired" else 300)  # untested genes left out
            toward = pts[pts["side"] == "toward"]
            away = pts[pts["side"] == "away"]
            assert len(toward) >= 8 and (toward["x"] > 0).all()
            assert len(away) >= 8 and (away["x"] < 0).all()
            assert (toward["y"] > -np.log10(0.05)).all()
            assert toward["symbol"].str.startswith("toward").mean() >= 0.8


def test_cli_perturb_stats_writes_table_and_volcano(tmp_path, capsys):
    df, _ = planted()
    path = tmp_path / "isp.parquet"
    df.to_parquet(path)
    (tmp_path / "isp.json").write_text(json.dumps({"cell_states": df.attrs["cell_states"]}))
    out = tmp_path / "stats.csv"
    main(["perturb-stats", str(path), "--mode", "goal_state_shift", "--out", str(out)])
    said = capsys.readouterr().out
    assert "paired test" in said and "toward the goal" in said and "not tested" in said
    table = pd.read_csv(out)
    assert {"goal_effect", "goal_toward_fdr", "goal_away_fdr", "toward_goal"} <= set(table)
    png = tmp_path / "stats.volcano.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match=r"^2$"):  # the plot is an output: not replaced
        main(["perturb-stats", str(path), "--mode", "goal_state_shift", "--out", str(out)])
    assert "already exists" in capsys.readouterr().err
    gf = tmp_path / "gf.tsv"
    args = ["--method", "geneformer", "--columns", "geneformer", "--no-plot"]
    main(["perturb-stats", str(path), "--mode", "goal_state_shift", "--out", str(gf), *args])
    table = pd.read_csv(gf, sep="\t")
    assert list(table.columns)[:3] == ["Gene_name", "Ensembl_ID", "Shift_to_goal_end"]
    assert list(table["Sig"].iloc[:3]) == [1, 1, 1] and not (tmp_path / "gf.volcano.png").exists()


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
    meta = {"cell_states": STATES, "random_init": True}
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(
        {**table.schema.metadata, b"ispo": json.dumps(meta).encode()}
    )
    path = tmp_path / "res.parquet"
    pq.write_table(table, path)
    out = perturb_stats(path, mode="goal_state_shift", method="geneformer")
    assert out["perturbed_ids"].iloc[0] == gid(7) and "hcm_fdr" in out.columns
    assert out.attrs["ispo_stats"]["random_init"]  # plots of it carry the warning
    assert "random_init" not in perturb_stats(make_results(), mode="aggregate").attrs["ispo_stats"]
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
        (lambda: perturb_stats(df, mode="goal_state_shift", min_cells=1), "min_cells"),
        (
            lambda: perturb_stats(
                df.drop(columns=["obs_index", "cell_id"]), mode="goal_state_shift"
            ),
            "obs_index and cell_id",
        ),
        (lambda: volcano_points(df), "goal-state columns"),
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


# ------------------------------------------------------------------------------ Geneformer names


def test_geneformer_columns_goal_state_shift_with_alt_state():
    df = make_results()
    ours = perturb_stats(df, mode="goal_state_shift", method="geneformer")
    theirs = perturb_stats(df, mode="goal_state_shift", method="geneformer", columns="geneformer")
    assert list(theirs.columns) == [
        "Gene_name",
        "Ensembl_ID",
        "Shift_to_goal_end",
        "Shift_to_alt_end_hcm",
        "Goal_end_vs_random_pval",
        "Alt_end_vs_random_pval_hcm",
        "Goal_end_FDR",
        "Alt_end_FDR_hcm",
        "N_Detections",
        "Sig",
    ]
    same = ours.set_index("perturbed_ids").loc[theirs["Ensembl_ID"]]
    np.testing.assert_array_equal(theirs["Goal_end_FDR"], same["goal_fdr"])
    np.testing.assert_array_equal(theirs["Alt_end_FDR_hcm"], same["hcm_fdr"])
    np.testing.assert_array_equal(theirs["Sig"], same["significant"].astype(int))
    # the paired test renames only what it shares with Geneformer's table
    paired = perturb_stats(df, mode="goal_state_shift", columns="geneformer")
    assert list(paired.columns[:5]) == [
        "Gene_name",
        "Ensembl_ID",
        "Shift_to_goal_end",
        "Shift_to_alt_end_hcm",
        "N_Detections",
    ]
    assert {"goal_toward_fdr", "hcm_away_fdr", "toward_goal"} <= set(paired.columns)
    assert "Goal_end_FDR" not in paired.columns


def test_geneformer_columns_other_modes():
    df = make_results(planted=(3, 11, 20), cos_drop=0.08)
    null = make_results(seed=1, shift=0.0)
    vs = perturb_stats(df, mode="vs_null", null=null, columns="geneformer")
    assert list(vs.columns[:10]) == [
        "Gene_name",
        "Ensembl_ID",
        "Test_avg_shift",
        "Null_avg_shift",
        "Test_vs_null_avg_shift",
        "Test_vs_null_pval",
        "Test_vs_null_FDR",
        "N_Detections_test",
        "N_Detections_null",
        "Sig",
    ]
    assert vs["Sig"].iloc[0] == 1 and vs["Sig"].is_monotonic_decreasing
    mix = perturb_stats(df, mode="mixture_model", columns="geneformer")
    assert list(mix.columns[:5]) == [
        "Gene_name",
        "Ensembl_ID",
        "Test_avg_shift",
        "Impact_component",
        "N_Detections",
    ]
    assert set(mix["Ensembl_ID"].iloc[:3]) == {gid(i) for i in (3, 11, 20)}
    assert list(mix["Impact_component"]) == [1, 1, 1] + [0] * 27
    agg = perturb_stats(df, mode="aggregate", columns="geneformer")
    assert list(agg.columns) == ["Cosine_sim", "Gene"] and len(agg) == len(df)
    np.testing.assert_array_equal(agg["Cosine_sim"], df["cos_sim"])  # already grouped by gene
    genes = pd.DataFrame(
        {
            "perturbed_ids": ["A", "A", "B"],
            "affected_id": ["X", "X", "X"],
            "affected_symbol": ["x", "x", "x"],
            "cos_sim": np.array([0.8, 0.6, 0.5], np.float32),
        }
    )
    results = pd.DataFrame(
        {"perturbed_ids": ["A", "B"], "perturbed_symbols": ["a", "b"], "cos_sim": [0.9, 0.9]}
    )
    pairs = perturb_stats(
        results, mode="aggregate_gene_shifts", gene_table=genes, columns="geneformer"
    )
    assert list(pairs.columns) == [
        "Gene_name",
        "Ensembl_ID",
        "Affected_gene_name",
        "Affected_Ensembl_ID",
        "Cosine_sim_mean",
        "Cosine_sim_stdev",
        "N_Detections",
    ]
    assert list(pairs["Gene_name"]) == ["b", "a"] and list(pairs["N_Detections"]) == [1, 2]


def test_unknown_method_or_columns_name_the_choices():
    df = make_results()
    with pytest.raises(IspoError, match="method must be one of paired, geneformer, not 't'"):
        perturb_stats(df, mode="goal_state_shift", method="t")
    with pytest.raises(IspoError, match="columns must be one of ispo, geneformer, not 'x'"):
        perturb_stats(df, mode="aggregate", columns="x")
