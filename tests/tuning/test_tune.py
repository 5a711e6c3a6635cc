"""`ispo tune`: an Optuna study over the fast path's settings, stored in SQLite and resumable."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import yaml
from tune_helpers import study_trials

import ispo
from ispo.cli.main import main
from ispo.errors import IspoError
from ispo.settings import RunSettings
from ispo.tuning import SearchSpace, tune
from ispo.tuning import measure as measure_module
from ispo.tuning import search as search_module

optuna = pytest.importorskip("optuna")

SMALL = SearchSpace(
    batch_tokens=[4096, 8192],
    precision=["fp32", "bf16"],
    attention=["default", "math"],
    compile=[False],
    int8=[False],
)


def trials(out: Path) -> list:
    return study_trials(out)


def test_tune_runs_three_trials_then_resumes_the_same_study(cells, model, tmp_path):
    out = tmp_path / "tune"
    res = tune(cells, model, out=out, n_trials=3, space=SMALL, repeats=1, data_source="demo:4")
    assert len(trials(out)) == 3
    assert {p.name for p in out.iterdir()} >= {
        "study.db",
        "best.yaml",
        "summary.json",
        "trials.csv",
    }
    s = json.loads((out / "summary.json").read_text())
    assert s["n_trials"] == 3 and s["kind"] == "tune"
    first = s["trials"][0]  # the default setting is measured first, as the speedup's reference
    assert first["settings"] == {
        "batch_tokens": 8192,
        "precision": "fp32",
        "attention": "default",
        "compile": False,
        "int8": False,
    }
    assert first["cos_mean"] == pytest.approx(1.0, abs=1e-6) and first["feasible"]
    assert res.best is not None and s["best"]["feasible"]
    assert s["best"]["cells_per_s"] == max(t["cells_per_s"] for t in s["trials"] if t["feasible"])
    created = optuna.load_study(
        study_name="ispo-tune", storage=f"sqlite:///{out / 'study.db'}"
    ).user_attrs["created"]

    # a second call with more trials continues the same study
    res2 = tune(cells, model, out=out, n_trials=4, space=SMALL, repeats=1, data_source="demo:4")
    again = trials(out)
    measured = [t for t in again if "copied_from" not in t.user_attrs]
    assert len(measured) == 4 and again[:3] == trials(out)[:3]
    assert res2.summary["n_measured"] == 4
    assert res2.summary["n_trials"] == len(again) == 4 + res2.summary["n_copies"]
    assert (
        optuna.load_study(
            study_name="ispo-tune", storage=f"sqlite:///{out / 'study.db'}"
        ).user_attrs["created"]
        == created
    )

    # the best setting is a --config that ispo embed accepts
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["embed"]["method"] == "fast"
    assert RunSettings.from_dict(best["embed"]) == res2.best

    # another data set in the same folder is refused, not mixed in
    with pytest.raises(IspoError, match="holds a study of a different run"):
        tune(
            cells.subset(np.arange(3)),
            model,
            out=out,
            n_trials=6,
            space=SMALL,
            repeats=1,
            data_source="demo:4",
        )


def test_out_of_memory_trials_are_pruned_not_fatal(cells, model, tmp_path, monkeypatch):
    real = measure_module.embed_cells

    def embed_cells(c, m, *, batch_tokens=None, **kw):
        if batch_tokens == 8192:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(c, m, batch_tokens=batch_tokens, **kw)

    monkeypatch.setattr(measure_module, "embed_cells", embed_cells)
    space = SearchSpace(
        batch_tokens=[4096, 8192],
        precision=["fp32"],
        attention=["default"],
        compile=[False],
        int8=[False],
    )
    res = tune(cells, model, out=tmp_path / "tune", n_trials=2, space=space, repeats=1)
    states = {t["settings"]["batch_tokens"]: t for t in res.summary["trials"]}
    assert states[8192]["state"] == "pruned"
    assert states[8192]["reason"].startswith("out of memory")
    assert res.best is not None and res.best.batch_tokens == 4096


def _oom_at(monkeypatch, tokens: int | None) -> None:
    """Make every measurement with a token budget of ``tokens`` run out of memory (None: none)."""
    from ispo.embedding.embed import embed_cells as real

    def embed_cells(c, m, *, batch_tokens=None, **kw):
        if tokens is not None and batch_tokens == tokens:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(c, m, batch_tokens=batch_tokens, **kw)

    monkeypatch.setattr(measure_module, "embed_cells", embed_cells)


@pytest.mark.parametrize("oom_again", [False, True])
def test_out_of_memory_is_tried_once_more_on_resume(cells, model, tmp_path, monkeypatch, oom_again):
    """Running out of memory may be the machine's passing state: a resume measures the setting
    once more; a second out-of-memory settles it (never tried a third time)."""
    space = SearchSpace(
        batch_tokens=[4096, 8192],
        precision=["fp32"],
        attention=["default"],
        compile=[False],
        int8=[False],
    )
    out = tmp_path / "tune"
    _oom_at(monkeypatch, 8192)
    tune(cells, model, out=out, n_trials=2, space=space, repeats=1)
    _oom_at(monkeypatch, 8192 if oom_again else None)
    res = tune(cells, model, out=out, n_trials=4, space=space, repeats=1)
    runs = [t for t in res.summary["trials"] if t["settings"]["batch_tokens"] == 8192]
    measured = [t for t in runs if t.get("copied_from") is None]
    assert [t["state"] for t in measured] == ["pruned", "pruned" if oom_again else "complete"]
    if oom_again:  # settled after two: a third call measures nothing new
        res = tune(cells, model, out=out, n_trials=6, space=space, repeats=1)
        again = [t for t in res.summary["trials"] if t["settings"]["batch_tokens"] == 8192]
        assert sum(t.get("copied_from") is None for t in again) == 2


def test_consistency_and_memory_constraints_decide_the_best(cells, model, tmp_path, monkeypatch):
    """With a fake measurement: the faster but inconsistent or too large settings lose; the same
    seed proposes the same settings."""

    def measure(cells, model, settings, **kw):
        fast = settings.precision == "bf16"
        return {
            "cells_per_s": 100.0 if fast else 10.0 + settings.batch_tokens / 4096,
            "tokens_per_s": 1.0,
            "time_s": 1.0,
            "time_s_passes": [1.0],
            "warmup_s": 0.0,
            "cos_mean": 0.99 if fast else 1.0,
            "cos_min": 0.99 if fast else 1.0,
            "max_abs_diff": 0.1,
            "isp_max_shift_diff": None,
            "nonfinite": None,
            "mem_peak_mib": 50.0 * settings.batch_tokens / 4096,
            "memory_kind": "rss",
            "backend": "fake",
        }

    monkeypatch.setattr(search_module, "measure", measure)
    four = SearchSpace(
        batch_tokens=[4096, 8192],
        precision=["fp32", "bf16"],
        attention=["default"],
        compile=[False],
        int8=[False],
    )
    s = tune(
        cells, model, out=tmp_path / "grid", n_trials=4, space=four, memory_cap_mib=75.0
    ).summary
    assert s["n_trials"] == 4  # the space fits in the budget: every setting is tried once
    assert s["best"]["settings"]["precision"] == "fp32"
    assert s["best"]["settings"]["batch_tokens"] == 4096  # 8192 is faster but over the cap
    reasons = sorted(t["reason"] for t in s["trials"] if not t["feasible"])
    assert len(reasons) == 3 and reasons[0].startswith("mean cosine 0.99")
    assert any(r.startswith("peak memory 100 MiB > cap 75 MiB") for r in reasons)

    runs = [
        tune(cells, model, out=tmp_path / f"seeded{i}", n_trials=2, space=SMALL, seed=3)
        for i in range(2)
    ]
    assert [t["settings"] for t in runs[0].summary["trials"]] == [
        t["settings"] for t in runs[1].summary["trials"]
    ]


def test_the_best_setting_loads_as_run_settings(tiny_model_dir, cells, model, tmp_path):
    """best.yaml read back by ispo.config.load_settings builds the model tune measured."""
    from ispo.config import load_settings

    res = tune(cells, model, out=tmp_path / "t", n_trials=1, space=SMALL, repeats=1)
    settings = load_settings(tmp_path / "t" / "best.yaml", command="embed")
    assert settings == res.best
    loaded = ispo.load_model(str(tiny_model_dir), vocab=model.vocab, settings=settings)
    assert loaded.settings == settings


def test_tune_cli_writes_a_config_that_embed_accepts(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "tune"
    main(
        [
            "tune",
            "--data",
            "demo:4",
            "--model",
            str(tiny_model_dir),
            "--n-trials",
            "1",
            "--out",
            str(out),
            "--batch-tokens",
            "4096",
            "--precision",
            "fp32",
            "--attention",
            "math",
            "--int8",
            "off",
            "--repeats",
            "1",
            "--min-cosine-cell",
            "0.99",
        ]
    )
    assert "1 trial (1 complete" in capsys.readouterr().out
    constraints = json.loads((out / "summary.json").read_text())["constraints"]
    assert constraints["min_cosine_cell"] == 0.99 and constraints["isp_cells"] == 0
    assert (out / "config.yaml").is_file() and (out / "best.yaml").is_file()
    emb = tmp_path / "emb.h5ad"
    main(
        [
            "embed",
            "demo:4",
            "--model",
            str(tiny_model_dir),
            "--out",
            str(emb),
            "--config",
            str(out / "best.yaml"),
        ]
    )
    a = ad.read_h5ad(emb)
    best = yaml.safe_load((out / "best.yaml").read_text())["embed"]
    saved = yaml.safe_load((tmp_path / "emb.h5ad.config.yaml").read_text())
    assert saved["batch-tokens"] == best["batch-tokens"] == 4096
    assert saved["attention"] == best["attention"] == "math"
    assert a.obsm["X_geneformer"].shape == (4, 16)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-trials", "0"], "--n-trials must be at least 1"),
        (["--precision", "fp8"], "unknown precision 'fp8'"),
        (["--compile", "maybe"], "--compile must be auto, search, on or off"),
        (["--attention", "fastest"], "unknown attention backend 'fastest'"),
        (["--isp-cells", "-1"], "--isp-cells must be 0 (off) or more"),
    ],
)
def test_tune_cli_bad_options_are_one_line(tiny_model_dir, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit, match=r"^2$") as info:
        main(
            [
                "tune",
                "--data",
                "demo:2",
                "--model",
                str(tiny_model_dir),
                "--out",
                str(tmp_path / "t"),
                *args,
            ]
        )
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def fake_measure(by_precision: dict[str, tuple[float, float, float]]):
    """A stand-in for ``measure``: (cells/s, mean cosine, worst-cell cosine) by precision."""

    def measure(cells, model, settings, **kw):
        speed, cos_mean, cos_min = by_precision[str(settings.precision)]
        return {
            "cells_per_s": speed + settings.batch_tokens / 4096,
            "cos_mean": cos_mean,
            "cos_min": cos_min,
            "isp_max_shift_diff": None,
            "nonfinite": None,
            "mem_peak_mib": 50.0,
        }

    return measure


def test_the_worst_cell_fails_a_setting_whose_mean_passes(cells, model, tmp_path, monkeypatch):
    """bf16 is 10x faster and its mean cosine 0.9999 passes 0.999, but one cell at 0.98 is under
    the worst-cell limit (0.995): fp32 is the best."""
    monkeypatch.setattr(
        search_module,
        "measure",
        fake_measure({"fp32": (10.0, 1.0, 1.0), "bf16": (100.0, 0.9999, 0.98)}),
    )
    two = SearchSpace([4096], ["fp32", "bf16"], ["default"], [False], [False])
    s = tune(cells, model, out=tmp_path / "t", n_trials=2, space=two).summary
    rows = {t["settings"]["precision"]: t for t in s["trials"]}
    assert rows["bf16"]["reason"] == "worst cell cosine 0.980000 < 0.995"
    assert s["best"]["settings"]["precision"] == "fp32"
    assert "worst cell >= 0.995" in (tmp_path / "t" / "best.yaml").read_text()


def test_repeated_proposals_do_not_use_the_budget(cells, model, tmp_path, monkeypatch):
    monkeypatch.setattr(
        search_module, "measure", fake_measure({"fp32": (10.0, 1.0, 1.0), "bf16": (20.0, 1, 1)})
    )
    two = SearchSpace([4096], ["fp32", "bf16"], ["default"], [False], [False])
    s = tune(cells, model, out=tmp_path / "two", n_trials=8, space=two).summary
    # both settings measured once; the search stops there instead of copying them 6 times
    assert (s["n_trials"], s["n_measured"], s["n_copies"]) == (2, 2, 0)
    # half of an 8-setting space: every counted trial measures a setting not measured before
    s = tune(cells, model, out=tmp_path / "half", n_trials=4, space=SMALL).summary
    measured = [json.dumps(t["settings"]) for t in s["trials"] if t["copied_from"] is None]
    assert len(measured) == len(set(measured)) == s["n_measured"] == 4
    assert s["n_trials"] == 4 + s["n_copies"]


def test_a_trial_stopped_with_ctrl_c_is_queued_again_and_not_counted(
    cells, model, tmp_path, monkeypatch
):
    measured = fake_measure({"fp32": (10.0, 1.0, 1.0), "bf16": (20.0, 1.0, 1.0)})

    def interrupted(cells, model, settings, **kw):
        if settings.precision == "bf16":
            raise KeyboardInterrupt
        return measured(cells, model, settings, **kw)

    two = SearchSpace([4096], ["fp32", "bf16"], ["default"], [False], [False])
    monkeypatch.setattr(search_module, "measure", interrupted)
    with pytest.raises(KeyboardInterrupt, match=r"^$"):
        tune(cells, model, out=tmp_path / "t", n_trials=2, space=two)
    monkeypatch.setattr(search_module, "measure", measured)
    s = tune(cells, model, out=tmp_path / "t", n_trials=2, space=two).summary
    states = [(t["state"], t["settings"]["precision"]) for t in s["trials"]]
    assert states == [("complete", "fp32"), ("failed", "bf16"), ("complete", "bf16")]
    assert s["trials"][1]["reason"] == "interrupted (Ctrl-C); queued again"
    assert (s["n_measured"], s["n_failed"], s["n_interrupted"]) == (2, 0, 1)
