"""The Geneformer options of ``ispo embed`` and ``ispo perturb`` on the command line.

Oracles: Geneformer's seeded draw (``np.random.default_rng(42).permutation``, which is what
``datasets.Dataset.shuffle(seed=42)`` uses: ``io/test_select.py`` checks that against the package),
the Python API each option wraps (itself checked against transformers), and the PNG decoded.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

import ispo
from ispo.cli.main import main

N = 10


def run(*args: str) -> None:
    main([str(a) for a in args])


@pytest.fixture(scope="module")
def demo():
    return ispo.demo_adata(N)


def test_embed_filter_max_ncells_and_plot(tmp_path, tiny_model_dir, demo, capsys):
    out = tmp_path / "e.h5ad"
    keep = sorted(set(demo.obs["condition"]))[:2]
    run(
        "embed",
        f"demo:{N}",
        "-m",
        tiny_model_dir,
        "-o",
        out,
        "--workers",
        "0",
        "--filter",
        f"condition={','.join(keep)}",
        "--max-ncells",
        "3",
        "--plot",
        "condition",
    )
    pool = np.flatnonzero(demo.obs["condition"].isin(keep).to_numpy())
    assert len(pool) > 3
    drawn = pool[np.sort(np.random.default_rng(42).permutation(len(pool))[:3])]
    got = ad.read_h5ad(out)
    sel = got.uns["geneformer"]["selection"]
    assert (sel["max_ncells"], sel["seed"], list(sel["filter"]["condition"])) == (3, 42, keep)
    assert np.flatnonzero(got.obs["geneformer_embedded"].to_numpy()).tolist() == drawn.tolist()
    assert np.isnan(got.obsm["X_geneformer"][~got.obs["geneformer_embedded"].to_numpy()]).all()
    png = tmp_path / "e.umap_condition.png"
    assert f"plot -> {png}" in capsys.readouterr().out
    assert imread(png).ndim == 3


def test_states_file_feeds_perturb(tmp_path, tiny_model_dir, demo):
    states = tmp_path / "s.safetensors"
    run(
        "embed",
        f"demo:{N}",
        "-m",
        tiny_model_dir,
        "-o",
        tmp_path / "e.h5ad",
        "--workers",
        "0",
        "--state-key",
        "condition",
        "--states-out",
        states,
        "--summary-stat",
        "exact_mean",
    )
    start, goal = demo.obs["condition"].value_counts().index[:2]
    gene = demo.var["ensembl_id"].iloc[0]  # overexpressed: one perturbation per cell
    common = [
        "perturb",
        f"demo:{N}",
        "-m",
        tiny_model_dir,
        "--genes",
        gene,
        "--perturb-type",
        "overexpress",
        "--state-key",
        "condition",
        "--start-state",
        start,
        "--goal-state",
        goal,
    ]
    run(*common, "-o", tmp_path / "a.parquet", "--workers", "0")
    run(*common, "-o", tmp_path / "b.parquet", "--workers", "1", "--state-embs", states)
    a, b = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    assert a["perturbed_ids"].tolist() == b["perturbed_ids"].tolist()
    np.testing.assert_allclose(b[f"shift_{goal}"], a[f"shift_{goal}"], rtol=0, atol=1e-6)


def test_gene_mode_writes_parquet(tmp_path, tiny_model_dir):
    out = tmp_path / "g.parquet"
    run("embed", "demo:3", "-m", tiny_model_dir, "-o", out, "--emb-mode", "gene", "--workers", "0")
    genes = pd.read_parquet(out)
    assert genes["n_cells"].between(1, 3).all() and "e15" in genes.columns


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--states-out", "s.safetensors"], "need --state-key K and --states-out FILE together"),
        (
            ["--emb-mode", "gene", "--state-key", "condition", "--states-out", "s.safetensors"],
            "--emb-mode gene runs in one go: no --states-out",
        ),
        (["--plot", "nope"], "--plot 'nope' is not an obs column"),
        (["--summary-stat", "mode"], "--summary-stat must be one of mean, median, exact_mean"),
        (["--emb-mode", "cls"], "--emb-mode must be cell or gene, not 'cls'"),
        (["--filter", "nope=1"], "filter key 'nope' is not an obs column"),
        (
            ["--state-key", "nope", "--states-out", "s.safetensors"],
            "state key 'nope' is not an obs column",
        ),
    ],
)
def test_bad_embed_options(tmp_path, tiny_model_dir, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^2$"):
        run("embed", "demo:3", "-m", tiny_model_dir, "-o", "e.h5ad", *extra)
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "e.h5ad").exists()
