"""Where the commands write, as a new user meets it (issue 25): in a fresh folder every command
creates the parent folders of its ``--out``; an output named for another format is refused
before any work; every command saves the config it ran with, keyed by its flags' names, and
that file's "rerun with" line runs as written.

Oracle: the files on disk, the command's own click parameters (for the flag names) and a second
run of the saved line.
"""

from __future__ import annotations

import shlex

import pytest
import typer
import yaml

from _scaleout import tiny_checkpoint, write_small
from ispo.cli.main import app, main
from ispo.config import run_config_path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    return {
        "ckpt": str(tiny_checkpoint(root / "ckpt")),
        "data": str(write_small(root / "d.h5ad", 9, seed=2)),
    }


def _chain(files) -> list[tuple[str, list[str], str]]:
    """(command, arguments, output) of a README-like session, every output in a new folder."""
    run = ["--vocab", "demo", "--model", files["ckpt"], "--device", "cpu"]
    return [
        ("demo", ["--n-cells", "3"], "new/demo/demo.h5ad"),
        ("embed", [files["data"], *run], "runs/a/emb.h5ad"),
        ("embed", [files["data"], *run, "--emb-mode", "gene"], "runs/g/genes.parquet"),
        ("perturb", [files["data"], *run, "--max-ncells", "2"], "runs/b/isp.parquet"),
        ("perturb-stats", ["runs/b/isp.parquet", "--min-cells", "2"], "runs/c/stats.csv"),
        ("evaluate", ["runs/a/emb.h5ad", "--label-key", "state", "--k", "2"], "runs/d/eval"),
        ("report", ["runs/d/eval", "runs/b"], "runs/e/report"),
    ]


def _flag_names(command: str) -> set[str]:
    """What a saved config may be keyed by: the command's long flags (without ``--``) and its
    arguments' names."""
    cmd = typer.main.get_command(app).commands[command]
    names = set()
    for p in cmd.params:
        opts = [o[2:] for o in p.opts if o.startswith("--")]
        names |= set(opts) if p.param_type_name == "option" else {p.name}
    return names


def test_fresh_folder_every_command_creates_parents_and_saves_a_rerunnable_config(
    files, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    for command, args, out in _chain(files):
        main(["-q", command, *args, "--out", out])
        assert (tmp_path / out).exists(), command
        saved = run_config_path(out)
        assert saved.is_file(), f"{command} saved no config"
        config = yaml.safe_load(saved.read_text())
        assert set(config) <= _flag_names(command), (command, set(config) - _flag_names(command))
        assert config["out"] == out
    capsys.readouterr()
    for command, _, out in _chain(files):
        text = run_config_path(out).read_text()
        line = next(ln for ln in text.splitlines() if ln.startswith("# rerun with: "))
        argv = shlex.split(line.removeprefix("# rerun with: "))
        assert argv[:3] == ["ispo", command, "--config"]
        main(["-q", *argv[1:]])  # as written: exits normally, output replaced
        assert (tmp_path / out).exists()


@pytest.mark.parametrize(
    ("command", "args", "out", "says"),
    [
        ("demo", ["--n-cells", "3"], "d.csv", "does not end in .h5ad"),
        ("perturb-stats", ["{results}"], "s.xlsx", "does not end in .csv or .tsv"),
        ("perturb", ["{data}", "--vocab", "demo", "--model", "{ckpt}"], "e7.csv", ".parquet"),
    ],
)
def test_an_output_named_for_another_format_is_refused(
    files, tmp_path, capsys, command, args, out, says
):
    results = tmp_path / "r.parquet"
    results.write_bytes(b"never read: the name is refused first")
    args = [a.format(results=results, **files) for a in args]
    with pytest.raises(SystemExit, match=r"^2$"):
        main([command, *args, "--out", str(tmp_path / out)])
    err = capsys.readouterr().err
    assert err.startswith("error: output ") and says in err and err.count("\n") == 1
    assert not (tmp_path / out).exists()


def test_global_flags_after_the_command(files, tmp_path, capsys):
    out = tmp_path / "d.h5ad"
    main(["demo", "--out", str(out), "--n-cells", "2", "--quiet"])
    assert out.exists()
    capsys.readouterr()
    from ispo.errors import IspoError

    # --debug after the command: the exception itself, not the one-line error
    with pytest.raises(IspoError, match="already exists"):
        main(["demo", "--out", str(out), "--n-cells", "2", "--debug"])
