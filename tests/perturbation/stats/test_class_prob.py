"""class_prob: per gene, the goal class's probability change, the share of cells that flip to
the goal class, and the paired test on the change; synthetic tables with the columns ispo
perturb writes for a classifier checkpoint (prob_<class>, delta_prob_<class>, pred_class,
orig_pred_class)."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from stats_support import gid, rows_of

import ispo
from ispo.cli.main import main
from ispo.errors import IspoError
from ispo.perturbation.stats import perturb_stats
from support import make_adata, make_vocab, save_finetuned_checkpoint

KINDS = ["toward"] * 5 + ["away"] * 5 + ["null"] * 50


def classifier_results(seed=0, n_cells=40):
    """Cells mostly predicted 'stim' (a few 'ctrl' already); toward genes raise P(ctrl) by
    0.15, away genes lower it by 0.05, the rest move it by skewed noise (most do little)."""
    rng = np.random.default_rng(seed)
    kinds = np.array(KINDS)
    gene, cell = np.nonzero(rng.random((kinds.size, n_cells)) < 0.8)
    p0 = np.where(np.arange(n_cells) < 5, 0.8, rng.uniform(0.1, 0.45, n_cells))
    effect = np.select([kinds == "toward", kinds == "away"], [0.15, -0.05], 0.0)
    noise = 0.02 * (rng.exponential(size=gene.size) - 1.0)
    after = np.clip(p0[cell] + effect[gene] + noise, 0.0, 1.0)
    label = np.array(["stim", "ctrl"])
    df = rows_of(
        cell,
        gene,
        [f"{kinds[g]}{g}" for g in gene],
        cos_sim=np.float32(0.99),
        prob_ctrl=after,
        prob_stim=1 - after,
        delta_prob_ctrl=after - p0[cell],
        delta_prob_stim=p0[cell] - after,
        pred_class=label[(after > 0.5).astype(int)],
        orig_pred_class=label[(p0[cell] > 0.5).astype(int)],
    )
    df.attrs["cell_states"] = {
        "state_key": "condition",
        "start_state": "stim",
        "goal_state": "ctrl",
    }
    return df, pd.Series(kinds, index=[gid(g) for g in range(kinds.size)])


def test_class_prob_finds_genes_that_raise_the_goal_class():
    df, kinds = classifier_results()
    out = perturb_stats(df, mode="class_prob")  # the goal class from the run's cell states
    kind = out["perturbed_ids"].map(kinds)
    assert out.loc[kind == "toward", "toward_goal"].all()
    assert not out.loc[kind != "toward", "toward_goal"].any()
    assert out.loc[kind == "away", "away_from_goal"].sum() >= 4
    assert out.loc[kind == "null", "away_from_goal"].sum() <= 1
    assert out["toward_goal"].iloc[:5].all()  # toward calls first
    info = out.attrs["ispo_stats"]
    assert info["mode"] == "class_prob" and info["goal_state"] == "ctrl"
    assert info["value"] == "delta_prob_ctrl" and info["classes"] == ["ctrl", "stim"]
    # +0.15 flips the 'stim' cells with P(ctrl) above ~0.35 (of 0.1-0.45): about 2 in 7
    assert (out.loc[kind == "toward", "flip_to_goal_share"] > 0.15).all()
    assert (out.loc[kind == "away", "flip_to_goal_share"] == 0).all()
    assert out.loc[kind == "null", "flip_to_goal_share"].mean() < 0.05


def test_class_prob_columns_equal_a_direct_computation():
    df, _ = classifier_results(seed=1)
    out = perturb_stats(df, mode="class_prob", goal_state="ctrl").set_index("perturbed_ids")
    for gene, g in df.groupby("perturbed_ids"):
        row = out.loc[gene]
        d = g["delta_prob_ctrl"].to_numpy()
        np.testing.assert_allclose(row["delta_prob_goal"], d.mean(), rtol=1e-12)
        lo, hi = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
        np.testing.assert_allclose(
            [row["delta_prob_goal_ci95_low"], row["delta_prob_goal_ci95_high"]], [lo, hi]
        )
        not_goal = g["orig_pred_class"] != "ctrl"
        flipped = not_goal & (g["pred_class"] == "ctrl")
        assert row["n_not_goal_before"] == not_goal.sum() == len(g) - (g["obs_index"] < 5).sum()
        assert row["n_flipped_to_goal"] == flipped.sum()
        np.testing.assert_allclose(row["flip_to_goal_share"], flipped.sum() / not_goal.sum())
        assert row["n_detections"] == len(g)


def test_class_prob_applies_the_paired_test_of_goal_state_shift():
    """The same values as a goal-state shift give the same test, column for column."""
    df, _ = classifier_results(seed=2)
    probs = perturb_stats(df, mode="class_prob").set_index("perturbed_ids")
    as_shift = df.assign(shift_ctrl=df["delta_prob_ctrl"])
    shifts = perturb_stats(as_shift, mode="goal_state_shift", alt_states=[])
    shifts = shifts.set_index("perturbed_ids").loc[probs.index]
    for ours, theirs in (
        ("delta_prob_goal", "shift_to_goal"),
        ("delta_prob_goal_vs_cell_genes", "shift_to_goal_vs_cell_genes"),
        ("goal_vs_cell_z", "goal_vs_cell_z"),
        ("goal_call_fdr", "goal_call_fdr"),
        ("toward_goal", "toward_goal"),
        ("away_from_goal", "away_from_goal"),
    ):
        np.testing.assert_array_equal(probs[ours].to_numpy(), shifts[theirs].to_numpy())


def test_class_prob_cli(tmp_path, capsys):
    df, _ = classifier_results()
    path = tmp_path / "isp.parquet"
    df.to_parquet(path)
    (tmp_path / "isp.json").write_text(json.dumps({"cell_states": df.attrs["cell_states"]}))
    out = tmp_path / "probs.csv"
    main(["perturb-stats", str(path), "--mode", "class_prob", "--out", str(out)])
    said = capsys.readouterr().out
    assert "class_prob on delta_prob_ctrl" in said and "5 toward the goal" in said
    table = pd.read_csv(out)
    assert {"delta_prob_goal", "flip_to_goal_share", "goal_call_fdr"} <= set(table)
    assert (tmp_path / "probs.volcano.png").read_bytes()[:4] == b"\x89PNG"


def test_class_prob_errors():
    df, _ = classifier_results()
    bare = df.drop(columns=[c for c in df.columns if "prob_" in c])
    cases = [
        (lambda: perturb_stats(bare, mode="class_prob"), "sequence-classification head"),
        (
            lambda: perturb_stats(df, mode="class_prob", goal_state="nk"),
            r"no column delta_prob_nk .*classes: ctrl, stim\): pass --goal-state",
        ),
        (
            lambda: perturb_stats(df.assign(**{}).pipe(_no_states), mode="class_prob"),
            "--goal-state with one of ctrl, stim",
        ),
        (
            lambda: perturb_stats(df.drop(columns="pred_class"), mode="class_prob"),
            "lacks column.*pred_class",
        ),
        (
            lambda: perturb_stats(df, mode="class_prob", method="geneformer"),
            "only the paired test",
        ),
    ]
    for fn, words in cases:
        with pytest.raises(IspoError, match=words) as info:
            fn()
        assert "\n" not in str(info.value)


def _no_states(df):
    out = df.copy()
    out.attrs = {}
    return out


def test_class_prob_reads_what_ispo_perturb_writes(tmp_path):
    """End to end on a tiny random classifier: the goal class from the run's metadata, the
    columns as ispo perturb writes them (three classes)."""
    vocab = make_vocab(1)
    ckpt = save_finetuned_checkpoint(tmp_path / "clf", vocab.size, "sequence", max_len=2048, seed=3)
    adata = make_adata(8, seed=5, density=0.15)
    adata.obs["state"] = ["stim", "ctrl"] * 4
    states = {"state_key": "state", "start_state": "stim", "goal_state": "ctrl"}
    model = ispo.load_model(ckpt, vocab=vocab, device="cpu")
    out = tmp_path / "isp.parquet"
    ispo.perturb(adata, model, cell_states=states, batch_tokens=256, out=out)
    df = pd.read_parquet(out)
    stats = perturb_stats(out, mode="class_prob", min_cells=2)
    assert stats.attrs["ispo_stats"]["goal_state"] == "ctrl"
    assert stats.attrs["ispo_stats"]["classes"] == ["ctrl", "stim", "other"]
    assert len(stats) == df["perturbed_ids"].nunique()
    want = df.groupby("perturbed_ids")["delta_prob_ctrl"].apply(lambda x: x.astype(float).mean())
    got = stats.set_index("perturbed_ids")["delta_prob_goal"]
    np.testing.assert_allclose(got.loc[want.index], want, rtol=1e-12)
    not_goal = df["orig_pred_class"] != "ctrl"
    assert stats["n_not_goal_before"].sum() == not_goal.sum()
    assert stats["n_flipped_to_goal"].sum() == (not_goal & (df["pred_class"] == "ctrl")).sum()
