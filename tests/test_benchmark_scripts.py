"""The benchmark scripts' own arithmetic and fairness.

benchmarks/pipeline.py's idle bound, hand-computed: the main process of a run with 0 workers
has two threads (main, and the background reader-tokenizer), so its CPU seconds may exceed its
wall seconds and must not be read as one thread's. benchmarks/finetune_speed.py: both loops
start from the same weights (transformers' logits of the validation cells equal ispo's before
any step) and its padding figure is hand-checked."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
KANG = BENCHMARKS.parents[1] / "shared" / "data" / "kang2018_pbmc_ifnb_2000.h5ad"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pipeline():
    return _script("pipeline")


def test_idle_bound_counts_the_main_process_threads_apart(pipeline):
    # the committed 0-worker run's CPU seconds: 9.1 in the process over 7.1 s of wall time;
    # say 4.0 of them in the main thread, so 5.1 in the background thread
    t = {"cpu_s_main": 9.1, "cpu_s_main_thread": 4.0, "cpu_s_workers": 0.0}
    # slowest part: the background thread's 5.1 s (the main thread 4.0, all over 2 cores 4.55)
    assert pipeline.idle_bound(200_000, 0, 2, t) == pytest.approx(200_000 / 5.1)
    # one worker with 4.6 s: all 9.5 CPU seconds over the 2 cores (4.75) bound it
    t = {"cpu_s_main": 4.9, "cpu_s_main_thread": 4.2, "cpu_s_workers": 4.6}
    assert pipeline.idle_bound(200_000, 1, 2, t) == pytest.approx(200_000 / 4.75)


@pytest.mark.skipif(not KANG.exists(), reason="needs ../shared/data (Kang)")
def test_finetune_speed_loops_start_from_the_same_weights(tmp_path):
    import torch

    import ispo
    from ispo.training.classifier import CellClassifier
    from ispo.training.settings import TrainSettings

    bench = _script("finetune_speed")
    train, val, classes = bench.kang_cells(6, 6, seed=0)
    assert sorted(np.bincount(train.y)) == [3, 3] and len(val) == 6
    model = ispo.load_model("gf-6L-30M-i2048", random_init=True, seed=0, device="cpu")
    clf = CellClassifier.from_model(model, classes, seed=0)
    clf.save_pretrained(tmp_path)
    hf = bench.HFBaseline(tmp_path, train, TrainSettings(epochs=1, precision="fp32"))
    torch.testing.assert_close(hf.logits(val), clf.logits(val.cells, 8192), atol=1e-5, rtol=0)
    lens = train.cells.lengths
    batches = [np.array([0, 1]), np.array([2, 3, 4, 5])]
    expected = (2 * lens[:2].max() + 4 * lens[2:].max()) / lens.sum()
    assert bench.padding(train, batches) == pytest.approx(expected)


def test_linear_baseline_weights_each_token_by_its_rank():
    bags = _script("kang_linear_baseline").rank_bags([[3, 1], [2]]).toarray()
    expected = [[0.0, 1 / np.log2(3), 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]]
    np.testing.assert_allclose(bags, expected)
