"""Start-up (issue 25): ``ispo --help``, ``ispo embed --help`` and a mistake in the flags are
answered without importing torch, transformers, anndata or pandas (seconds on a small CPU);
those are imported only inside the commands that use them. ``import ispo`` stays as cheap,
and every public name is still there when asked for.

Oracle: ``sys.modules`` of a fresh interpreter after the call (no timing: the README's
start-up figures are measured separately, on a quiet machine).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _scaleout import env

HEAVY = ("torch", "transformers", "anndata", "pandas", "scipy", "sklearn")

PROBE = """
import json, sys
from ispo.cli.main import main
try:
    main({argv!r})
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _heavy_after(argv: list[str], tmp_path) -> list[str]:
    code = PROBE.format(argv=argv, heavy=HEAVY)
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["embed", "--help"],
        ["perturb", "--help"],
        ["embed", "in.h5ad", "--model", "m", "--out", "exists.h5ad"],  # output exists
        ["perturb", "in.h5ad", "--model", "m", "--out", "e7.csv"],  # wrong format
    ],
    ids=["help", "embed-help", "perturb-help", "embed-out-exists", "perturb-out-format"],
)
def test_help_and_flag_mistakes_import_no_heavy_library(argv, tmp_path):
    (tmp_path / "exists.h5ad").write_text("an earlier result")
    assert _heavy_after(argv, tmp_path) == []


def test_import_ispo_is_lazy_and_complete():
    code = (
        f"import json, sys, ispo; before = sorted(m for m in {HEAVY!r} if m in sys.modules); "
        "names = {n: type(getattr(ispo, n)).__name__ for n in ispo.__all__}; "
        "print(json.dumps([before, sorted(names), 'torch' in sys.modules]))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env())
    assert res.returncode == 0, res.stderr[-2000:]
    before, names, torch_after = json.loads(res.stdout)
    assert before == []  # `import ispo` alone imports none of them
    assert names == sorted(
        ["PRESETS", "CellStates", "DataOptions", "GeneformerConfig", "GeneformerModel",
         "IspoError", "RunSettings", "TokenizedCells", "TrainSettings", "Vocab", "demo_adata",
         "demo_vocab", "embed", "embed_cells", "evaluate", "finetune", "load_model",
         "load_vocab", "perturb", "perturb_stats", "read_input", "tokenize"]
    )  # fmt: skip
    assert torch_after  # asking for the names imported what they need
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import ispo

        ispo.nope  # noqa: B018
