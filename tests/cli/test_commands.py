"""``ispo demo``, and the V2 demo data it writes.

Oracle: the documented layout of Geneformer V2 dictionaries (``<pad>``=0, ``<mask>``=1,
``<cls>``=2, ``<eos>``=3; 20,275 tokens) and the Python API the command wraps
(``ispo.demo_adata``), compared value by value.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import ispo
from ispo.cli.main import main
from ispo.model.presets import preset


@pytest.mark.parametrize("version", [1, 2])
def test_demo_command_writes_the_api_data(tmp_path, capsys, version):
    out = tmp_path / "demo.h5ad"
    main(["demo", "--out", str(out), "--n-cells", "12", "--version", str(version), "--seed", "3"])
    assert f"wrote 12 synthetic cells -> {out}" in capsys.readouterr().out
    got, want = ad.read_h5ad(out), ispo.demo_adata(12, version=version, seed=3)
    assert (got.X != want.X).nnz == 0 and got.X.dtype == np.float32
    pd.testing.assert_frame_equal(got.obs, want.obs)
    pd.testing.assert_frame_equal(got.var, want.var)
    assert "synthetic" in got.uns
    with pytest.raises(SystemExit, match=r"^2$"):  # an existing output is not replaced
        main(["demo", "--out", str(out), "--n-cells", "5"])
    assert "already exists" in capsys.readouterr().err
    main(["demo", "--out", str(out), "--n-cells", "5", "--overwrite"])
    assert ad.read_h5ad(out).n_obs == 5


def test_v2_demo_data_has_the_v2_layout():
    vocab = ispo.demo_vocab(2)
    assert vocab.size == 20_275 == preset("Geneformer-V2-104M").vocab_size
    specials = {t: vocab.token_dict[t] for t in ("<pad>", "<mask>", "<cls>", "<eos>")}
    assert specials == {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
    adata = ispo.demo_adata(6, version=2, seed=1)
    assert set(adata.var["ensembl_id"]) <= set(vocab.token_dict)
    x = adata.X.toarray()
    assert (x == np.round(x)).all() and (x >= 0).all()  # raw integer counts
    cells = ispo.tokenize(adata, vocab)
    assert cells.has_cls and len(cells) == 6
    for toks in cells.to_lists():
        assert toks[0] == 2 and toks[-1] == 3 and not {0, 1, 2, 3} & set(toks[1:-1])
        assert 1000 < len(toks) <= vocab.max_input  # about 2,000 genes per cell
    v1 = ispo.demo_vocab(1)
    assert v1.size == preset("Geneformer-V1-10M").vocab_size and "<cls>" not in v1.token_dict


def test_demo_seed_is_the_data_seed():
    """`ispo demo --seed` seeds the synthetic counts (no weights are involved): its help says so."""
    import typer

    from ispo.cli.main import app

    demo = typer.main.get_command(app).commands["demo"]
    seed = next(p for p in demo.params if p.name == "seed")
    assert "synthetic" in seed.help and "weights" not in seed.help
    a, b = ispo.demo_adata(3, seed=1), ispo.demo_adata(3, seed=2)
    assert (a.X != b.X).nnz > 0  # the seed changes the counts
