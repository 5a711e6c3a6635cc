"""Every malformed input we know, fed to the command line.

Each must end with a non-zero exit, one ``error: ...`` line on stderr that names the problem, no
traceback (unless ``--debug``), and nothing half-written beside the output. The commands run in
this process through :func:`ispo.cli.main.main` (fast); one runs as a real ``python -m ispo`` child
to check what a user's terminal shows.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from _scaleout import REPO, ispo_cmd, run, small_adata, tiny_checkpoint
from ispo.cli.main import main
from ispo.errors import IspoError
from ispo.io.vocab import FILES


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("bad") / "ckpt")


def _h5ad(tmp: Path, adata: ad.AnnData, name: str = "in.h5ad") -> Path:
    adata.write_h5ad(tmp / name)
    return tmp / name


def _with_X(X: np.ndarray) -> ad.AnnData:
    base = small_adata(len(X))
    return ad.AnnData(sp.csr_matrix(X), obs=base.obs, var=base.var)


def _counts(bad: float) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        X = small_adata(6).X.toarray()
        X[4, np.flatnonzero(X[4])[0]] = bad
        return _h5ad(tmp, _with_X(X))

    return make


def _no_gene_ids(tmp: Path) -> Path:
    a = small_adata(6)
    del a.var["ensembl_id"]
    a.var_names = [f"UNKNOWN{i}" for i in range(a.n_vars)]
    return _h5ad(tmp, a)


def _ids(prefix: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        a = small_adata(6)
        a.var["ensembl_id"] = [f"{prefix}{i:011d}" for i in range(a.n_vars)]
        return _h5ad(tmp, a)

    return make


def _empty_cells(tmp: Path) -> Path:
    a = small_adata(6)
    return _h5ad(tmp, ad.AnnData(sp.csr_matrix(a.shape, dtype=np.float32), obs=a.obs, var=a.var))


def _no_cells(tmp: Path) -> Path:
    return _h5ad(tmp, small_adata(6)[:0].copy())


def _duplicate_names(tmp: Path) -> Path:
    a = small_adata(6)
    a.obs_names = ["c0", "c1", "c2", "c1", "c4", "c5"]
    return _h5ad(tmp, a)


def _truncated(tmp: Path) -> Path:
    path = _h5ad(tmp, small_adata(200, n_genes=60, max_genes=40))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _good(tmp: Path) -> Path:
    return _h5ad(tmp, small_adata(6))


def _corrupt_vocab(tmp: Path) -> Path:
    import ispo

    voc = ispo.demo_vocab()
    root = tmp / "vocab"
    root.mkdir()
    for key, name in FILES.items():
        with open(root / name, "wb") as fh:
            pickle.dump(getattr(voc, key), fh)
    good = (root / "gene_median_dictionary.pkl").read_bytes()
    (root / "gene_median_dictionary.pkl").write_bytes(good[: len(good) // 3])
    return root


# (id, make input, extra arguments, what the error line must say); {x} are filled per case
CASES = [
    ("float-counts", _counts(1.5), [], "non-integer"),
    ("negative-counts", _counts(-3.0), [], "negative"),
    ("nan-counts", _counts(np.nan), [], "NaN"),
    ("no-gene-ids", _no_gene_ids, [], "no gene ids"),
    ("wrong-species", _ids("ENSMUSG"), [], "check the species"),
    ("no-gene-in-vocab", _ids("ENSG9"), [], "is in the vocabulary"),
    ("empty-cells", _empty_cells, [], "no cell has counts"),
    ("no-cells", _no_cells, [], "no cell"),
    ("duplicate-cell-names", _duplicate_names, [], "duplicate cell name"),
    ("truncated-h5ad", _truncated, [], "copy or write it again"),
    ("missing-input", lambda tmp: tmp / "nowhere.h5ad", [], "does not exist"),
    ("wrong-vocab-size", _good, ["--model", "{small_ckpt}"], "expects 100"),
    ("corrupt-vocab-pickle", _good, ["--vocab", "{vocab}"], "gene_median_dictionary.pkl"),
    ("out-under-a-file", _good, ["--out", "{tmp}/file.txt/out.{ext}"], "is a file"),
    ("out-other-format", _good, ["--out", "{tmp}/out.csv"], "does not end in"),
    ("out-exists", _good, ["--out", "{tmp}/exists.{ext}"], "already exists"),
]


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("bad") / "ckpt100", vocab_size=100)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.filterwarnings("ignore:Observation names are not unique")
@pytest.mark.parametrize("command", ["embed", "perturb"])
@pytest.mark.parametrize(("case", "make", "extra", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(
    command, case, make, extra, message, ckpt, small_ckpt, tmp_path, capsys
):
    ext = "h5ad" if command == "embed" else "parquet"
    data = make(tmp_path)
    fill = {"tmp": str(tmp_path), "ext": ext, "small_ckpt": str(small_ckpt)}
    if case == "corrupt-vocab-pickle":
        fill["vocab"] = str(_corrupt_vocab(tmp_path))
    if case == "out-under-a-file":
        (tmp_path / "file.txt").write_text("a regular file")
    if case == "out-exists":
        (tmp_path / f"exists.{ext}").write_text("an earlier result")
    extra = [a.format(**fill) for a in extra]
    args = {"--vocab": "demo", "--model": str(ckpt), "--out": str(tmp_path / f"out.{ext}")}
    for flag, value in zip(extra[::2], extra[1::2]):
        args[flag] = value
    before = _files(tmp_path)
    with pytest.raises(SystemExit, match=r"^2$") as info:
        main([command, str(data), *[x for kv in args.items() for x in kv], "--device", "cpu"])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    lines = [ln for ln in re.split(r"[\r\n]+", err) if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert message.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in err
    assert _files(tmp_path) == before, "something was left behind"


def test_debug_shows_the_exception(ckpt, tmp_path):
    data = _duplicate_names(tmp_path)
    with pytest.raises(IspoError, match="duplicate"):
        main(
            [
                "--debug",
                "embed",
                str(data),
                "--vocab",
                "demo",
                "--model",
                str(ckpt),
                "--out",
                str(tmp_path / "o.h5ad"),
            ]
        )


def test_a_real_terminal_sees_one_line(ckpt, tmp_path):
    data = _truncated(tmp_path)
    res = run(
        ispo_cmd(
            "embed",
            str(data),
            "--vocab",
            "demo",
            "--model",
            str(ckpt),
            "--out",
            str(tmp_path / "o.h5ad"),
        ),
        cwd=REPO,
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0, res.stderr
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad"]


def test_ispo_never_writes_pickles():
    """ispo writes JSON/Parquet/h5ad; pickles are only read, from a directory the user named."""
    src = REPO / "src" / "ispo"
    writers = re.compile(
        r"pickle\.dumps?\(|\.to_pickle\(|joblib\.dump|torch\.save\(|"
        r"allow_pickle\s*=\s*True"
    )
    found = [
        f"{p.relative_to(src)}: {line.strip()}"
        for p in src.rglob("*.py")
        for line in p.read_text().splitlines()
        if writers.search(line)
    ]
    # one exception: fine-tuning's resume state (optimizer, schedule, RNG) in OUT.train/, a
    # torch zip read back only with weights_only=True (torch's restricted unpickler); the
    # model it delivers is model.safetensors
    resume_state = (
        'training/checkpoint.py: torch.save({**state, "fingerprint": self.fingerprint}, tmp)'
    )
    assert found == [resume_state], f"ispo must not write pickles: {found}"
    loads = re.findall(r"torch\.load\((.*)\)", (src / "training" / "checkpoint.py").read_text())
    assert loads and all("weights_only=True" in call for call in loads), loads
    readers = [
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if re.search(r"pickle\.(loads?\(|Unpickler\b)", p.read_text())
    ]
    assert readers == ["io/vocab.py"], readers  # and only through its PlainUnpickler
    assert not re.search(r"pickle\.loads?\(", (src / "io" / "vocab.py").read_text())


def test_duplicate_names_are_refused_by_the_api_too(tmp_path):
    from ispo.io.validate import check_unique_names

    check_unique_names(pd.Index(["a", "b"]))
    with pytest.raises(IspoError, match="2 duplicate cell name"):
        check_unique_names(pd.Index(["a", "b", "a", "b"]))


@pytest.mark.parametrize(
    ("command", "extra", "flag", "api_name"),
    [
        ("perturb", ["--perturb-type", "erase"], "--perturb-type", "perturb_type"),
        ("perturb", ["--emb-mode", "cls"], "--emb-mode", "emb_mode"),  # V1 vocabulary
        ("perturb", ["--state-key", "nope", "--start-state", "a", "--goal-state", "b"],
         "--state-key", "state_key"),
        ("embed", ["--emb-layer", "3"], "--emb-layer", "emb_layer"),
        ("evaluate", ["--label-key", "state", "--control-label", "zz"], "--control-label",
         "control_label"),
    ],
)  # fmt: skip
def test_cli_errors_name_the_flags(ckpt, tmp_path, capsys, command, extra, flag, api_name):
    """The Python API's errors name its parameters; on the command line they name the flag
    a user types instead."""
    data = str(_good(tmp_path))
    if command == "evaluate":  # an embedded file to evaluate
        main(["-q", "embed", data, "--vocab", "demo", "--model", str(ckpt),
              "--out", str(tmp_path / "e.h5ad")])  # fmt: skip
        args = [str(tmp_path / "e.h5ad"), *extra, "--out", str(tmp_path / "ev")]
    else:
        ext = "h5ad" if command == "embed" else "parquet"
        args = [data, "--vocab", "demo", "--model", str(ckpt), *extra,
                "--out", str(tmp_path / f"o.{ext}")]  # fmt: skip
    capsys.readouterr()
    with pytest.raises(SystemExit, match=r"^2$"):
        main([command, *args])
    err = capsys.readouterr().err
    assert err.startswith("error: ") and flag in err and api_name not in err, err
