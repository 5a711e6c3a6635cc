"""goal_state_shift: the paired test finds planted genes in the plain sense; Geneformer's method
is unchanged (checked against an independent scipy reference)."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from stats_support import by_kind, gid, make_results, reference_rank_test, rows_of

from ispo.cli.main import main
from ispo.errors import IspoError
from ispo.perturbation.plots import volcano_points
from ispo.perturbation.stats import perturb_stats
from ispo.perturbation.stats.simulate import Design, simulated_results

# ------------------------------------------------------------------------------ geneformer


def test_geneformer_method_finds_only_the_planted_gene():
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


def test_geneformer_method_explicit_states_and_background_subsample():
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


def test_geneformer_method_alt_state_with_effect():
    df = make_results()
    df.loc[df["perturbed_ids"] == gid(2), "shift_hcm"] -= 0.05
    out = perturb_stats(df, mode="goal_state_shift", method="geneformer").set_index("perturbed_ids")
    assert out.loc[gid(2), "hcm_fdr"] < 1e-6 and out.loc[gid(2), "shift_to_hcm"] < -0.04
    assert (out.drop(index=gid(2))["hcm_fdr"] > 0.05).all()


def test_geneformer_method_equals_its_reference_with_geneformer_columns():
    """InSilicoPerturberStats' goal_state_shift written independently with scipy."""
    df, _ = simulated_results(seed=2)
    out = perturb_stats(df, mode="goal_state_shift", method="geneformer", columns="geneformer")
    pooled = df["shift_end"].to_numpy(np.float64)
    rows = []
    for gene, g in df.groupby("perturbed_ids", sort=False):
        values = g["shift_end"].to_numpy(np.float64)
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


# ------------------------------------------------------------------------------ paired


def test_paired_finds_toward_genes_and_reports_away_genes_apart():
    df, kinds = simulated_results()
    out = perturb_stats(df, mode="goal_state_shift")
    assert out.attrs["ispo_stats"]["method"] == "paired"
    toward = by_kind(out, kinds, "toward_goal")
    assert toward["toward"] >= 9 and toward["away"] == 0 and toward["single"] == 0
    away = by_kind(out, kinds, "away_from_goal")
    assert away["away"] >= 9 and away["toward"] == 0 and away["single"] == 0
    assert toward["null"] + away["null"] <= 2  # the rate over many runs: test_calibration.py
    # genes seen in one cell are listed, not tested, and not counted in the FDR correction
    kind = out["perturbed_ids"].map(kinds)
    single = out[kind == "single"]
    assert len(single) == 20 and (single["n_detections"] == 1).all()
    assert not single["tested"].any() and single["goal_call_fdr"].isna().all()
    assert (out.loc[kind != "single", "tested"]).all()
    info = out.attrs["ispo_stats"]
    assert info["min_cells"] == 10 and info["n_tested"] == 280 and info["n_untested"] == 20
    # rows: toward calls (smallest FDR first), other tested genes, away calls, untested genes
    n_toward, n_away = int(out["toward_goal"].sum()), int(out["away_from_goal"].sum())
    assert out["toward_goal"].iloc[:n_toward].all()
    assert out["goal_call_fdr"].iloc[:n_toward].is_monotonic_increasing
    assert out["away_from_goal"].iloc[280 - n_away : 280].all()
    assert not out["tested"].iloc[-20:].any()
    # the mean-shift interval covers the planted effect (plus the cells' mean offset) mostly
    for k, sign in (("toward", 1), ("away", -1)):
        rows = out[kind == k]
        assert (np.sign(rows["shift_to_goal"]) == sign).all()
        assert (np.sign(rows["shift_to_goal_vs_cell_genes"]) == sign).all()
        assert ((rows["goal_percentile_in_cell"] - 0.5) * sign > 0.2).all()


def test_paired_equals_a_direct_computation():
    """Every paired column recomputed from its definition with scipy, gene by gene."""
    df, _ = simulated_results(Design(n_single=5, n_null=45), seed=4)
    out = perturb_stats(df, mode="goal_state_shift").set_index("perturbed_ids")
    v = df["shift_end"].astype(np.float64)
    genes, gene_ids = pd.factorize(df["perturbed_ids"])
    z, pct = reference_rank_test(v.to_numpy(), genes, df["obs_index"].to_numpy(), len(gene_ids))
    centred = v - v.groupby(df["obs_index"]).transform("median")
    ref = {}
    for k, gene in enumerate(gene_ids):
        d = v[genes == k].to_numpy()
        row = out.loc[gene]
        assert row["n_detections"] == len(d)
        np.testing.assert_allclose(row["shift_to_goal"], d.mean(), rtol=1e-12)
        np.testing.assert_allclose(
            row["shift_to_goal_vs_cell_genes"], centred[genes == k].mean(), rtol=1e-12
        )
        np.testing.assert_allclose(row["goal_percentile_in_cell"], pct[k], rtol=1e-12)
        if len(d) < 10:
            assert not row["tested"] and np.isnan(row["goal_call_pval"])
            continue
        lo, hi = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
        np.testing.assert_allclose(
            [row["shift_to_goal_ci95_low"], row["shift_to_goal_ci95_high"]], [lo, hi], rtol=1e-10
        )
        np.testing.assert_allclose(row["goal_vs_cell_z"], z[k], rtol=1e-10)
        np.testing.assert_allclose(row["goal_vs_cell_pval"], 2 * sps.norm.sf(abs(z[k])))
        up = max(sps.norm.sf(z[k]), sps.ttest_1samp(d, 0, alternative="greater").pvalue)
        down = max(sps.norm.cdf(z[k]), sps.ttest_1samp(d, 0, alternative="less").pvalue)
        ref[gene] = (min(1.0, 2 * min(up, down)), up < down, lo, hi)
    tested = out.loc[list(ref)]
    p = np.array([r[0] for r in ref.values()])
    np.testing.assert_allclose(tested["goal_call_pval"], p, rtol=1e-9)
    # one Benjamini-Hochberg over all tested genes, both directions together
    fdr = sps.false_discovery_control(p, method="bh")
    np.testing.assert_allclose(tested["goal_call_fdr"], fdr, rtol=1e-9)
    up = np.array([r[1] for r in ref.values()])
    lo, hi = np.array([r[2] for r in ref.values()]), np.array([r[3] for r in ref.values()])
    np.testing.assert_array_equal(tested["toward_goal"], (fdr < 0.05) & up & (lo > 0))
    np.testing.assert_array_equal(tested["away_from_goal"], (fdr < 0.05) & ~up & (hi < 0))
    assert tested["toward_goal"].sum() >= 8 and tested["away_from_goal"].sum() >= 8


def test_paired_calls_are_directions_in_the_plain_sense():
    """Three genes that move every cell toward the goal (+0.05, +0.03, +0.01): the weakest is
    below the cell's other genes but still moves cells toward the goal, so it is not called
    away; the strongest is called toward."""
    rng = np.random.default_rng(0)
    n_cells = 40
    cell = np.repeat(np.arange(n_cells), 3)
    gene = np.tile(np.arange(3), n_cells)
    shift = np.array([0.05, 0.03, 0.01])[gene] + rng.normal(0, 0.002, gene.size)
    df = rows_of(cell, gene, [f"up{g}" for g in gene], shift_nf=shift)
    out = perturb_stats(df, mode="goal_state_shift", goal_state="nf").set_index("perturbed_ids")
    weakest, strongest = out.loc[gid(2)], out.loc[gid(0)]
    assert weakest["goal_vs_cell_z"] < -5 and weakest["shift_to_goal_ci95_low"] > 0
    assert not weakest["away_from_goal"] and not weakest["toward_goal"]
    assert strongest["toward_goal"] and strongest["goal_call_fdr"] < 1e-6
    assert not out["away_from_goal"].any()


def test_paired_does_not_call_null_genes_of_far_cells():
    """Null genes seen only in the cells farthest along toward the goal look like hits to
    Geneformer's pooled test, not to the within-cell one; Geneformer's two-sided test also
    flags the genes that move cells away."""
    df, kinds = simulated_results()
    gf = perturb_stats(df, mode="goal_state_shift", method="geneformer")
    assert by_kind(gf, kinds, "significant")["away"] >= 8
    df, kinds = simulated_results(Design(offset_sd=0.03))
    offset = df["shift_end"].groupby(df["obs_index"]).median()
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
                "shift_end": np.float32(offset[c] + rng.normal(0, 0.01)),
            }
            for g in range(10)
            for c in far
        ]
    )
    both = pd.concat([df, extra], ignore_index=True)
    both.attrs = df.attrs
    kinds = pd.concat([kinds, pd.Series("far", index=[f"FAR{g}" for g in range(10)])])
    gf = perturb_stats(both, mode="goal_state_shift", method="geneformer")
    paired = perturb_stats(both, mode="goal_state_shift")
    assert gf.loc[gf["perturbed_ids"].map(kinds) == "far", "significant"].sum() >= 8
    assert not paired.loc[paired["perturbed_ids"].map(kinds) == "far", "toward_goal"].any()
    assert by_kind(paired, kinds, "toward_goal")["away"] == 0


def test_paired_alt_state_has_its_own_columns():
    df = make_results()
    out = perturb_stats(df, mode="goal_state_shift").set_index("perturbed_ids")
    for col in ("shift_to_hcm", "shift_to_hcm_ci95_low", "hcm_call_fdr", "toward_hcm"):
        assert col in out.columns
    assert out.loc[gid(7), "toward_goal"] and out["toward_goal"].sum() == 1
    assert not out["toward_hcm"].any()
    assert out.attrs["ispo_stats"]["value"] == "shift_nf"


def test_paired_needs_several_genes_per_cell():
    df, _ = simulated_results()
    # one perturbation per cell, as with a gene set perturbed together
    one = df.drop_duplicates("obs_index").assign(perturbed_ids=gid(0))
    with pytest.raises(IspoError, match="single perturbation"):
        perturb_stats(one, mode="goal_state_shift", min_cells=2)
    out = perturb_stats(one, mode="goal_state_shift", method="geneformer")
    assert len(out) == 1 and out["n_detections"].iloc[0] == len(one)


def test_volcano_points_split_toward_and_away():
    df, _ = simulated_results()
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
    df, _ = simulated_results()
    path = tmp_path / "isp.parquet"
    df.to_parquet(path)
    (tmp_path / "isp.json").write_text(json.dumps({"cell_states": df.attrs["cell_states"]}))
    out = tmp_path / "stats.csv"
    main(["perturb-stats", str(path), "--mode", "goal_state_shift", "--out", str(out)])
    said = capsys.readouterr().out
    assert "paired test" in said and "toward the goal" in said and "not tested" in said
    assert "on shift_end" in said  # the perturb column that shift_to_goal summarises
    table = pd.read_csv(out)
    assert {"shift_to_goal", "goal_call_fdr", "toward_goal", "away_from_goal"} <= set(table)
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
