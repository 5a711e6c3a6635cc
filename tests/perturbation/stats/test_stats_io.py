"""perturb-stats' inputs and outputs: run metadata, written tables, errors, Geneformer's names."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from stats_support import STATES, gid, make_results

from ispo.errors import IspoError
from ispo.perturbation.plots import volcano_points
from ispo.perturbation.stats import perturb_stats, write_stats


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
    assert {"goal_call_fdr", "hcm_call_fdr", "toward_goal"} <= set(paired.columns)
    assert "shift_to_goal_ci95_low" in paired.columns  # the paired test's own: ispo names
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
