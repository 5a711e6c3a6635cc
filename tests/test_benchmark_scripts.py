"""benchmarks/pipeline.py's idle bound, hand-computed: the main process of a run with 0 workers
has two threads (main, and the background reader-tokenizer), so its CPU seconds may exceed its
wall seconds and must not be read as one thread's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pipeline.py"


@pytest.fixture(scope="module")
def pipeline():
    spec = importlib.util.spec_from_file_location("pipeline_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_idle_bound_counts_the_main_process_threads_apart(pipeline):
    # the committed 0-worker run's CPU seconds: 9.1 in the process over 7.1 s of wall time;
    # say 4.0 of them in the main thread, so 5.1 in the background thread
    t = {"cpu_s_main": 9.1, "cpu_s_main_thread": 4.0, "cpu_s_workers": 0.0}
    # slowest part: the background thread's 5.1 s (the main thread 4.0, all over 2 cores 4.55)
    assert pipeline.idle_bound(200_000, 0, 2, t) == pytest.approx(200_000 / 5.1)
    # one worker with 4.6 s: all 9.5 CPU seconds over the 2 cores (4.75) bound it
    t = {"cpu_s_main": 4.9, "cpu_s_main_thread": 4.2, "cpu_s_workers": 4.6}
    assert pipeline.idle_bound(200_000, 1, 2, t) == pytest.approx(200_000 / 4.75)
