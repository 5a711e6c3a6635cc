"""``perturb`` options users pass that the parity tests do not: the ``CellStates`` class, ``layer``,
``gene_key``, ``load_result=False``; and the ``ispo perturb-stats`` command.

Oracles: the same run on the plain input (whose numbers ``test_engine.py`` checks against the
Hugging Face list-surgery reference) must come out identical; ``perturb-stats aggregate`` is
recomputed with a plain pandas group-by of the results file.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ispo.cli.main import main
from ispo.errors import IspoError
from ispo.perturbation.engine import perturb
from ispo.perturbation.options import CellStates

STATES = {"state_key": "state", "start_state": "a", "goal_state": "b", "alt_states": ["c"]}
KW = dict(perturb_type="delete", emb_mode="cell_and_gene", batch_tokens=64, shard_cells=4)


@pytest.fixture(scope="module")
def plain(setup_v1):
    """The run on the plain input, with cell states."""
    return perturb(setup_v1.adata, setup_v1.model, cell_states=STATES, **KW)


def assert_same_run(got: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    pd.testing.assert_frame_equal(got.attrs["gene_table"], want.attrs["gene_table"])


def test_cell_states_class_is_the_dict(setup_v1, plain):
    states = CellStates(state_key="state", start_state="a", goal_state="b", alt_states=("c",))
    got = perturb(setup_v1.adata, setup_v1.model, cell_states=states, **KW)
    assert_same_run(got, plain)
    assert [c for c in got.columns if c.startswith("shift_")] == ["shift_b", "shift_c"]
    assert CellStates.parse(STATES) == states and CellStates.parse(states) is states
    assert states.targets == ("b", "c")


def test_cell_states_dict_missing_a_key_is_refused():
    with pytest.raises(IspoError, match=r"cell_states lacks 'state_key': give state_key"):
        CellStates.parse({"start_state": "a", "goal_state": "b"})


def test_layer_holds_the_counts(setup_v1, plain):
    """X normalised and log-transformed, raw counts in a layer: ``layer`` reads the layer."""
    adata = setup_v1.adata.copy()
    counts = adata.X.copy()
    adata.layers["counts"] = counts
    lib = np.asarray(counts.sum(1)).ravel()
    adata.X = sp.csr_matrix(np.log1p(counts.toarray() / lib[:, None] * 1e4).astype(np.float32))
    got = perturb(adata, setup_v1.model, cell_states=STATES, layer="counts", **KW)
    assert_same_run(got, plain)
    with pytest.raises(IspoError, match=r"non-integer values .*give raw integer counts"):
        perturb(adata, setup_v1.model, cell_states=STATES, **KW)


def test_gene_key_names_the_id_column(setup_v1, plain):
    """Ids in another var column (and useless var names): ``gene_key`` picks the column."""
    adata = setup_v1.adata.copy()
    adata.var = pd.DataFrame(
        {"gene_ids": adata.var["ensembl_id"].to_numpy()},
        index=[f"probe{i}" for i in range(adata.n_vars)],
    )
    got = perturb(adata, setup_v1.model, cell_states=STATES, gene_key="gene_ids", **KW)
    assert_same_run(got, plain)
    with pytest.raises(IspoError, match=r"var has no column 'nope': pick one of"):
        perturb(adata, setup_v1.model, gene_key="nope", **KW)


def test_load_result_false_writes_and_returns_no_rows(setup_v1, plain, tmp_path):
    out = tmp_path / "r.parquet"
    got = perturb(
        setup_v1.adata, setup_v1.model, cell_states=STATES, out=out, load_result=False, **KW
    )
    assert len(got) == 0 and list(got.columns) == list(plain.columns)
    assert got.attrs["metadata"]["n_rows"] == len(plain) > 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), plain.reset_index(drop=True))
    genes = pd.read_parquet(out.with_name("r.genes.parquet"))
    pd.testing.assert_frame_equal(genes, plain.attrs["gene_table"].reset_index(drop=True))
    assert json.loads(out.with_suffix(".json").read_text())["n_rows"] == len(plain)


def test_perturb_stats_command(setup_v1, plain, tmp_path, capsys):
    results = tmp_path / "r.parquet"
    perturb(setup_v1.adata, setup_v1.model, cell_states=STATES, out=results, **KW)
    out = tmp_path / "stats.csv"
    main(["perturb-stats", str(results), "--out", str(out), "--mode", "aggregate"])
    assert f"-> {out}" in capsys.readouterr().out
    got = pd.read_csv(out).set_index("perturbed_ids").sort_index()
    df = pd.read_parquet(results)
    by = df.groupby("perturbed_ids")
    assert got.index.tolist() == sorted(df["perturbed_ids"].unique())
    np.testing.assert_array_equal(got["n_cells"], by.size().sort_index())
    for col in ("cos_sim", "cell_cos_sim", "shift_b", "shift_c"):
        want = by[col].apply(lambda x: x.astype(np.float64).mean()).sort_index()
        np.testing.assert_allclose(got[f"{col}_mean"], want, rtol=1e-12, atol=0, err_msg=col)
    # goal-state statistics read the run's states from its metadata; only known modes pass
    shift = tmp_path / "shift.parquet"
    main(["perturb-stats", str(results), "--out", str(shift), "--mode", "goal_state_shift"])
    paired = {"shift_to_goal", "shift_to_goal_vs_cell_genes", "goal_call_fdr", "tested"}
    assert paired <= set(pd.read_parquet(shift).columns)
    gf = tmp_path / "gf.parquet"
    main(["perturb-stats", str(results), "--out", str(gf), "--mode", "goal_state_shift",
          "--method", "geneformer"])  # fmt: skip
    assert {"shift_to_goal", "goal_fdr", "c_fdr", "significant"} <= set(pd.read_parquet(gf).columns)
    with pytest.raises(SystemExit, match=r"^2$"):
        main(["perturb-stats", str(results), "--out", str(tmp_path / "x.csv"), "--mode", "x"])
    assert "mode" in capsys.readouterr().err
