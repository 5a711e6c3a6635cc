"""`ispo.evaluate` and `ispo evaluate`: AnnData in, metrics.json / metrics.md / PNGs out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import ispo
from ispo.cli.main import main
from ispo.errors import IspoError
from support import SHARED

KANG = SHARED / "kang2018_pbmc_ifnb_2000.h5ad"
V1_VOCAB = SHARED / "geneformer-v1"


def labelled(n_per: int = 30, seed: int = 0) -> ad.AnnData:
    """Three well-separated labels in obsm, three cells 'not embedded' (NaN rows)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["ctrl", "a", "b"], n_per)
    centres = {c: 8.0 * np.eye(5)[i] for i, c in enumerate(["ctrl", "a", "b"])}
    X = rng.normal(size=(len(labels), 5)) + np.array([centres[c] for c in labels])
    embedded = np.ones(len(labels), dtype=bool)
    embedded[[0, 40, 80]] = False
    X[~embedded] = np.nan
    adata = ad.AnnData(
        obs=pd.DataFrame(
            {"condition": labels, "geneformer_embedded": embedded},
            index=[f"cell{i}" for i in range(len(labels))],
        )
    )
    adata.obsm["X_geneformer"] = X.astype(np.float32)
    adata.uns["geneformer"] = {"model": "toy", "random_init": False, "precision": "fp32"}
    return adata


def test_evaluate_drops_unembedded_cells_and_is_deterministic():
    adata = labelled()
    r = ispo.evaluate(adata, label_key="condition", control_label="ctrl", seed=1)
    assert r["kind"] == "evaluate"
    assert (r["n_obs"], r["n_not_embedded"], r["n_cells"], r["n_dropped_nan"]) == (90, 3, 87, 0)
    assert r["classification"]["classes"] == ["a", "b", "ctrl"]
    assert r["classification"]["accuracy"] == 1.0
    assert r["geometry"]["control_separation"] > 1.5
    assert r["scib"]["ASW_label"] == pytest.approx((r["geometry"]["silhouette"] + 1) / 2)
    assert r["scib"]["ARI_cluster/label"] == r["geometry"]["ari"]
    assert r["consistency"] is None and r["random_init"] is False and r["warnings"] == []
    json.dumps(r, allow_nan=False)
    assert ispo.evaluate(adata, label_key="condition", control_label="ctrl", seed=1) == r


def test_reference_consistency_matches_cells_by_name():
    adata = labelled()
    ref = adata[::-1].copy()  # same cells, other order
    ref.obsm["X_geneformer"] = ref.obsm["X_geneformer"] * 2.0  # same directions
    r = ispo.evaluate(adata, label_key="condition", reference=ref, k=5)
    c = r["consistency"]
    assert c["n_cells"] == 87 and c["k"] == 5
    assert c["cosine_min"] == pytest.approx(1.0) and c["knn_overlap"] == 1.0
    shifted = ref.copy()
    shifted.obs_names = [f"other{i}" for i in range(shifted.n_obs)]
    with pytest.raises(IspoError, match="does not hold the same cells"):
        ispo.evaluate(adata, label_key="condition", reference=shifted)


def test_random_weights_are_flagged_everywhere(tmp_path):
    adata = labelled()
    adata.uns["geneformer"]["random_init"] = True
    r = ispo.evaluate(adata, label_key="condition", out=tmp_path / "ev")
    assert r["random_init"] is True and "RANDOM WEIGHTS" in r["warnings"][0]
    md = (tmp_path / "ev" / "metrics.md").read_text()
    assert "RANDOM WEIGHTS" in md.split("## Classification")[0]  # in the header
    assert "say nothing about biology" in md


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label_key": "nope"}, "no label column obs['nope']"),
        ({"label_key": "condition", "embedding_key": "X_pca"}, "no embedding obsm['X_pca']"),
        ({"label_key": "condition", "control_label": "dmso"}, "control label 'dmso'"),
    ],
)
def test_evaluate_errors_are_one_line(kwargs, message):
    with pytest.raises(IspoError, match=re.escape(message)) as info:
        ispo.evaluate(labelled(), **kwargs)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def embedded_files(tiny_model_dir, tmp_path_factory):
    """demo:20 embedded by the tiny model in fp32 and in bf16, as written by ispo embed."""
    folder = tmp_path_factory.mktemp("embedded")
    paths = {}
    for precision in ("fp32", "bf16"):
        adata = ispo.demo_adata(20)
        model = ispo.load_model(str(tiny_model_dir), vocab=ispo.demo_vocab(), device="cpu")
        ispo.embed(adata, model, precision=precision)
        paths[precision] = folder / f"emb_{precision}.h5ad"
        adata.write_h5ad(paths[precision])
    return paths


def test_evaluate_cli_on_an_embedded_file(embedded_files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    main(
        [
            "evaluate",
            str(embedded_files["fp32"]),
            "--label-key",
            "condition",
            "--control-label",
            "control",
            "--reference",
            str(embedded_files["bf16"]),
            "--k",
            "3",
            "--out",
            str(out),
        ]
    )
    assert "20 cells, 5 labels" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "confusion.png",
        "embedding.png",
        "metrics.json",
        "metrics.md",
    ]
    r = json.loads((out / "metrics.json").read_text())
    assert r["n_cells"] == 20 and r["embedding_dim"] == 16
    assert r["embedding"]["precision"] == "fp32"
    assert r["embedding"]["model"] == str(tiny_model_dir)
    assert r["consistency"]["cosine_mean"] > 0.99  # bf16 vs fp32 on the same cells
    assert r["consistency"]["reference"] == str(embedded_files["bf16"])
    assert [row["label"] for row in r["per_label"]] == r["classification"]["classes"]
    shown = {x["metric"]: (x["n_cells"], x["of"]) for x in r["subsamples"]}
    assert shown["embedding.png"] == shown["knn_overlap"] == shown["silhouette"] == (20, 20)
    md = (out / "metrics.md").read_text()
    assert "| accuracy |" in md and "Consistency with the reference" in md
    assert "## Per label" in md and "| control |" in md.split("## Per label")[1]
    assert "## Subsamples" in md and "| embedding.png | 20 | 20 | 50,000 | 0 |" in md
    assert "ARI_cluster/label" in md and "![embedding coloured by label](embedding.png)" in md
    for png in ("embedding.png", "confusion.png"):
        assert_real_png(out / png)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--label-key", "nope"], "no label column obs['nope']"),
        (["--label-key", "condition", "--embedding", "X_umap"], "no embedding obsm['X_umap']"),
        (["--label-key", "condition", "--reference", "missing.h5ad"], "does not exist"),
    ],
)
def test_evaluate_cli_bad_input_is_one_line(embedded_files, tmp_path, capsys, args, message):
    out = tmp_path / "eval"
    with pytest.raises(SystemExit, match=r"^2$") as info:
        main(["evaluate", str(embedded_files["fp32"]), "--out", str(out), *args])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not out.exists()  # nothing half-written


def test_evaluate_cli_missing_input_and_existing_output(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"^2$") as info:
        main(
            [
                "evaluate",
                str(tmp_path / "none.h5ad"),
                "--label-key",
                "c",
                "--out",
                str(tmp_path / "e"),
            ]
        )
    assert info.value.code == 2 and "does not exist" in capsys.readouterr().err
    (tmp_path / "e").mkdir()
    with pytest.raises(SystemExit, match=r"^2$") as info:
        main(
            [
                "evaluate",
                str(tmp_path / "none.h5ad"),
                "--label-key",
                "c",
                "--out",
                str(tmp_path / "e"),
            ]
        )
    assert info.value.code == 2 and "already exists" in capsys.readouterr().err


def assert_real_png(path: Path) -> None:
    """A PNG that decodes to a picture with something drawn on it (not a header, not blank)."""
    from matplotlib.image import imread

    img = imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) >= 100, img.shape
    assert len(np.unique(img.reshape(-1, img.shape[2]), axis=0)) > 10  # more than a few colours


def test_evaluate_on_kang_embeddings(tiny_model_dir, tmp_path):
    """Real data: 300 Kang PBMCs (150 ctrl, 150 IFN-beta) embedded by the tiny random model."""
    if not (KANG.is_file() and V1_VOCAB.is_dir()):
        pytest.skip(f"Kang data or the V1 vocabulary not present under {SHARED}")
    adata = ad.read_h5ad(KANG)
    pick = np.concatenate(
        [np.flatnonzero(adata.obs["condition"] == c)[:150] for c in ("ctrl", "stim")]
    )
    adata = adata[pick].copy()
    model = ispo.load_model(str(tiny_model_dir), vocab=str(V1_VOCAB), device="cpu")
    ispo.embed(adata, model)
    r = ispo.evaluate(adata, label_key="condition", control_label="ctrl", out=tmp_path / "kang")
    c = r["classification"]
    assert r["n_cells"] == 300 and c["classes"] == ["ctrl", "stim"]
    assert c["n_test_per_label"] == [30, 30] and c["n_test"] == 60  # 20 % of 150 each
    # the scores follow from the confusion matrix by the textbook formulas
    cm = np.array(c["confusion_matrix"])
    assert cm.sum() == 60 and cm.sum(axis=1).tolist() == [30, 30]
    assert c["accuracy"] == pytest.approx(np.trace(cm) / 60)
    tp = np.diag(cm)
    f1 = 2 * tp / (cm.sum(axis=0) + cm.sum(axis=1))  # 2TP / (2TP + FP + FN)
    assert c["f1_per_label"] == pytest.approx(f1) and c["f1_macro"] == pytest.approx(f1.mean())
    assert [row["f1"] for row in r["per_label"]] == c["f1_per_label"]
    assert r["geometry"]["control_separation"] is not None
    assert_real_png(tmp_path / "kang" / "embedding.png")


def test_wandb_tracking_is_optional_and_lazy(embedded_files, tmp_path, monkeypatch):
    """--wandb sends the metrics and the result folder to a run (a stand-in wandb module here;
    the real one works with WANDB_MODE=offline)."""
    import sys
    import types

    calls: dict = {"summary": {}, "artifacts": []}

    class Run:
        summary = calls["summary"]

        def log(self, values, step=None):
            calls.setdefault("log", []).append(values)

        def log_artifact(self, art):
            calls["artifacts"].append(art.name)

        def finish(self):
            calls["finished"] = True

    class Artifact:
        def __init__(self, name, type):
            self.name = name

        def add_dir(self, path, **kwargs):
            pass

        add_file = add_dir

    fake = types.SimpleNamespace(
        init=lambda **kw: calls.update(init=kw) or Run(), Artifact=Artifact, Table=None
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    main(
        [
            "evaluate",
            str(embedded_files["fp32"]),
            "--label-key",
            "condition",
            "--out",
            str(tmp_path / "ev"),
            "--wandb",
            "--wandb-project",
            "p",
        ]
    )
    assert calls["init"]["project"] == "p" and calls["init"]["config"]["label_key"] == "condition"
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert calls["summary"]["classification/accuracy"] == metrics["classification"]["accuracy"]
    assert calls["artifacts"] == ["evaluation"] and calls["finished"]
