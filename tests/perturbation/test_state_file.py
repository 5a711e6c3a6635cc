"""State embeddings as a file: ``ispo embed --states-out`` and ``perturb(state_embs=...)``.

Oracles: the states' summaries against the cell embeddings of plain transformers
(``hf_reference``: mean, ``np.median``, and ``torch.median`` for Geneformer's ``exact_median``);
a perturbation run given the file against the same run computing its states itself (checked
against list surgery and transformers in ``test_engine.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_reference import embed_reference
from ispo.embedding.states import StateEmbeddings, state_about, states_of_output
from ispo.embedding.stream import embed_file
from ispo.errors import IspoError
from ispo.perturbation.engine import perturb

STATES = {"state_key": "state", "start_state": "a", "goal_state": "b", "alt_states": ["c"]}


def states_file(s, tmp_path, stat="exact_mean", pool="mean", name="states.safetensors"):
    model = s.model.with_settings(s.model.settings.replace(pool=pool))
    out = tmp_path / f"emb-{pool}.h5ad"
    if not out.exists():
        embed_file(s.adata, out, model, vocab=s.vocab, pool_mode=pool, workers=0)
    about = state_about(model, s.vocab, "X_geneformer")
    states = states_of_output(out, "X_geneformer", "state", stat, about)
    states.save(tmp_path / name, overwrite=True)
    return tmp_path / name


@pytest.mark.parametrize("stat", ["mean", "exact_mean", "median", "exact_median"])
def test_state_summaries_match_transformers(setup_v2, tmp_path, stat):
    s = setup_v2
    path = states_file(s, tmp_path, stat)
    got = StateEmbeddings.load(path)
    ref = embed_reference(s.hf, s.cells.to_lists(), -1, "mean", True).numpy()
    labels = s.adata.obs["state"].to_numpy()[s.cells.obs_index]
    for st in ("a", "b", "c"):
        rows = ref[labels == st]
        want = {
            "mean": rows.mean(0),
            "exact_mean": rows.mean(0),
            "median": np.median(rows, axis=0),
            "exact_median": torch.median(torch.from_numpy(rows), dim=0).values.numpy(),
        }[stat]
        np.testing.assert_allclose(got.vectors[st], want, rtol=0, atol=2e-5)
        assert got.about["n_cells"][st] == len(rows)
    assert got.about["summary_stat"] == stat and got.about["emb_layer"] == -1


def test_median_and_exact_median_differ_on_even_counts(setup_v1, tmp_path):
    """Geneformer's exact_median is torch.median (the lower middle value); median the midpoint."""
    s = setup_v1
    mid = StateEmbeddings.load(states_file(s, tmp_path, "median", name="m.safetensors"))
    low = StateEmbeddings.load(states_file(s, tmp_path, "exact_median", name="e.safetensors"))
    assert mid.about["n_cells"]["a"] % 2 == 0
    assert (low.vectors["a"] <= mid.vectors["a"] + 1e-7).all()
    assert (low.vectors["a"] < mid.vectors["a"] - 1e-6).any()


@pytest.mark.parametrize("mode", ["cell", "cls"])
def test_perturb_with_the_file_equals_computing_the_states(setup_v2, tmp_path, mode):
    s = setup_v2
    path = states_file(s, tmp_path, "exact_mean", pool="cls" if mode == "cls" else "mean")
    kw = dict(perturb_type="delete", emb_mode=mode, cell_states=STATES, batch_tokens=64)
    want = perturb(s.adata, s.model, **kw)
    got = perturb(s.adata, s.model, state_embs=path, **kw)
    for c in ("cos_sim", "shift_b", "shift_c"):
        np.testing.assert_allclose(got[c], want[c], rtol=0, atol=1e-6, err_msg=c)
    assert got.attrs["metadata"]["params"]["state_embs"] == StateEmbeddings.load(path).digest()


def test_files_of_other_runs_refused(setup_v1, setup_v2, tmp_path):
    s = setup_v1
    path = states_file(s, tmp_path)
    kw = dict(perturb_type="delete", cell_states=STATES)
    with pytest.raises(IspoError, match=r"taken at emb_layer -1, this run uses 0: pass --emb-la"):
        perturb(s.adata, s.model, state_embs=path, emb_layer=0, **kw)
    with pytest.raises(IspoError, match="need cell states: give --state-key"):
        perturb(s.adata, s.model, state_embs=path, perturb_type="delete")
    other = StateEmbeddings.load(path)
    other.about["model_digest"] = "0" * 40
    with pytest.raises(IspoError, match=r"come from model .*, not the weights of"):
        perturb(s.adata, s.model, state_embs=other, **kw)
    narrow = StateEmbeddings({k: v[:16] for k, v in other.vectors.items()}, other.about)
    with pytest.raises(IspoError, match=r"are 16 wide but model .* is 32 wide"):
        perturb(s.adata, s.model, state_embs=narrow, **kw)
    few = StateEmbeddings.load(path)
    del few.vectors["c"]
    with pytest.raises(IspoError, match=r"state 'c' is not in .* \(it has a, b\)"):
        perturb(s.adata, s.model, state_embs=few, **kw)
    cls_file = states_file(setup_v2, tmp_path, pool="cls", name="cls.safetensors")
    with pytest.raises(IspoError, match="are cls-pooled, this run compares mean-pooled cells"):
        perturb(setup_v2.adata, setup_v2.model, state_embs=cls_file, emb_mode="cell", **kw)


def test_a_converted_geneformer_dict_is_checked_by_width_only(setup_v1, tmp_path, caplog):
    """``safetensors.torch.save_file(state_embs_dict, path)`` of a Geneformer run: no metadata,
    so only the width can be checked (and a warning says so)."""
    from safetensors.torch import save_file

    s = setup_v1
    mine = StateEmbeddings.load(states_file(s, tmp_path))
    path = tmp_path / "geneformer.safetensors"
    save_file({k: torch.from_numpy(v) for k, v in mine.vectors.items()}, str(path))
    kw = dict(perturb_type="delete", cell_states=STATES)
    got = perturb(s.adata, s.model, state_embs=path, **kw)
    want = perturb(s.adata, s.model, state_embs=mine, **kw)
    np.testing.assert_array_equal(got["shift_b"], want["shift_b"])
    assert "records no model or layer: only its width was checked" in caplog.text
