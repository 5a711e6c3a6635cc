"""README.md runs as written: every shell command and Python block, in order, in one fresh
folder, as a new user following it top to bottom (issue 25: its Python snippet had failed).

The inputs the README names are swapped for tiny ones by :data:`SUBSTITUTIONS` (applied to
every command and Python block before it runs): ``kang.h5ad`` -> 18 Kang cells and ~90 genes
(``../shared/data``; those blocks skip without it, and so do the Python blocks after one, which
share its namespace), model names and checkpoint paths -> a tiny checkpoint saved by
transformers, ``demo:1000`` -> ``demo:4``, long runs -> a few cells or trials. ``...`` in a
command stands for the options of the command above it (:data:`ELLIPSIS`). ``ispo`` and
``python -m ispo`` run in this process (:func:`ispo.cli.main.main`; torch is imported once),
``python -c CODE`` is executed here too, anything else in a subprocess.

A block that cannot run here (GPU, torchrun, the install itself) carries a marker line just
before its fence, visible only in the Markdown source::

    <!-- readme-test: skip (needs GPUs and torchrun) -->

and a single command line that cannot run is listed in :data:`SKIP_LINES` with its reason.
A new README block that fails: fix the README (it is what users copy), or add a substitution
here for a large input, or mark it with a reason.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from _scaleout import REPO, env, tiny_checkpoint
from ispo.cli.main import main
from support import SHARED

README = REPO / "README.md"
MARKER = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<why>[^)]+)\)\s*-->")
KANG = SHARED / "kang2018_pbmc_ifnb_2000.h5ad"
V1 = SHARED / "geneformer-v1"

# (regex, replacement) applied in order to each command line and Python block; {name} fields
# are the tiny stand-ins of :class:`Stand`
SUBSTITUTIONS: list[tuple[str, str]] = [
    (r"(?<![\w/.-])kang\.h5ad\b", "{kang}"),  # 18 Kang cells (shared data)
    (r"(?<![\w/.-])data\.h5ad\b", "{data}"),  # the Kang cells as heart cells (shared data)
    (r"path/to/geneformer-v1|(?<=--vocab )DIR\b", "{v1}"),  # the V1 dictionaries (shared)
    (r"path/to/checkpoint|path/to/Geneformer-V1-10M|\bCKPT\b", "{ckpt}"),
    (r"(?<=--model )gf-6L-10M-i2048\b", "{ckpt}"),  # the preset -> the tiny checkpoint
    (r"\bdemo:\d+", "demo:4"),
    (r"demo_adata\(200\)", "demo_adata(30)"),  # the volcano demo: 5 control cells, not 40
    (r"--n-trials \d+", "--n-trials 2"),
    (r"--num_perturbations \d+", "--num_perturbations 2"),
    # the benchmarks: the tiny checkpoint, 2 cells, one method besides the baseline, no plots
    (
        r"^((?:python -m )?ispo (?:benchmark|bench-isp|baseline|optimized)\b.*)$",
        r"\1 --model {ckpt}",
    ),
    (
        r"^(ispo benchmark\b.*)$",
        r"\1 --n-cells 2 --methods fast --batch-sizes 2 --repeats 1 --no-plots",
    ),
]
# what `...` in a command stands for: the input and the options of the command above it
ELLIPSIS = {
    "embed": "kang.h5ad --vocab DIR --model CKPT",
    "perturb": "kang.h5ad --vocab DIR --model CKPT",
    "tune": "--data kang.h5ad --vocab DIR --model CKPT --n-trials 2",
}
# single command lines that cannot run in a test, and why (regex on the line as written)
SKIP_LINES = {
    r"^ispo perturb \.\.\. --resume": "continues a stopped run: tests/runtime/test_interrupt.py",
    r"^ispo finetune \.\.\. --resume": "continues a stopped run: tests/training/",
}
NEEDS_SHARED = re.compile(r"kang\.h5ad|data\.h5ad|geneformer-v1|--vocab DIR\b")


@dataclass
class Block:
    """One fenced code block of the README."""

    line: int  # 1-based line of the fence
    lang: str
    text: str
    skip: str | None  # the marker's reason

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang}"


def readme_blocks() -> list[Block]:
    """The bash/sh/python fenced blocks of README.md, with their skip markers."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt().parse(README.read_text())
    blocks, marker = [], None
    for tok in tokens:  # a marker counts only directly before its fence
        if tok.type == "html_block":
            m = MARKER.search(tok.content)
            marker = m.group("why") if m else None
            continue
        lang = tok.info.strip() if tok.type == "fence" else ""
        if lang in ("bash", "sh", "shell", "python"):
            kind = "python" if lang == "python" else "bash"
            blocks.append(Block(tok.map[0] + 1, kind, tok.content, marker))
        marker = None
    return blocks


def commands(block: Block) -> list[tuple[int, str]]:
    """(README line, command) of each command of a shell block: continuations joined,
    comments and blank lines left out."""
    out, pending, start = [], "", 0
    for k, raw in enumerate(block.text.splitlines()):
        if not pending:
            start = block.line + 1 + k
        pending += raw[:-1] if raw.endswith("\\") else raw
        if raw.endswith("\\"):
            continue
        words = shlex.split(pending, comments=True)
        if words:
            out.append((start, pending))
        pending = ""
    return out


@dataclass
class Stand:
    """The tiny stand-ins the substitutions point to, made once per module."""

    root: Path
    fields: dict[str, str] = field(default_factory=dict)

    def needs_shared(self, text: str) -> bool:
        return bool(NEEDS_SHARED.search(text)) and not (KANG.exists() and V1.exists())

    def substitute(self, text: str, *, flags: int = re.MULTILINE) -> str:
        for pattern, repl in SUBSTITUTIONS:
            text = re.sub(pattern, repl.format(**self.fields), text, flags=flags)
        return text


def kang_subset(path: Path) -> Path:
    """18 Kang cells (12 ctrl: enough for a gene to reach goal_state_shift's 10 cells; 6 stim
    expressing IFIT1, ISG15 and STAT1), the 90 genes they express most plus those three: the
    README's Kang commands in seconds."""
    import anndata as ad
    import numpy as np

    full = ad.read_h5ad(KANG)
    x = full.X.tocsr()
    marked = [list(full.var_names).index(g) for g in ("IFIT1", "ISG15", "STAT1")]
    has = np.asarray((x[:, marked] > 0).sum(1)).ravel() == 3
    stim = np.flatnonzero((full.obs["condition"] == "stim").to_numpy() & has)[:6]
    ctrl = np.flatnonzero((full.obs["condition"] == "ctrl").to_numpy())[:12]
    cells = np.sort(np.concatenate([ctrl, stim]))
    sub = x[cells]
    top = np.argsort(-np.asarray((sub > 0).sum(0)).ravel())[:90]
    genes = np.sort(np.unique(np.concatenate([top, marked])))
    full[cells][:, genes].copy().write_h5ad(path)
    return path


def as_heart_cells(kang: Path, path: Path) -> Path:
    """The README's ``data.h5ad`` (obs ``disease`` dcm/nf, ``cell_type``): the Kang cells
    relabelled (stim: dcm, ctrl: nf; every other cell a cardiomyocyte)."""
    import anndata as ad

    a = ad.read_h5ad(kang)
    a.obs["disease"] = a.obs["condition"].map({"stim": "dcm", "ctrl": "nf"}).astype(str)
    a.obs["cell_type"] = ["cardiomyocyte" if i % 2 else "fibroblast" for i in range(a.n_obs)]
    a.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def stand(tmp_path_factory) -> Stand:
    root = tmp_path_factory.mktemp("readme")
    fields = {"ckpt": str(tiny_checkpoint(root / "tiny-ckpt")), "v1": str(V1)}
    fields |= {"kang": "-", "data": "-"}
    if KANG.exists():  # without it, the blocks that name Kang skip
        fields["kang"] = str(kang_subset(root / "kang18.h5ad"))
        fields["data"] = str(as_heart_cells(Path(fields["kang"]), root / "data.h5ad"))
    (root / "work").mkdir()
    return Stand(root / "work", fields)


def expand_ellipsis(cmd: str) -> str:
    """``ispo perturb kang.h5ad ... --genes X`` -> the options of the command above;
    ``ispo perturb ... --x`` -> its input too."""
    m = re.match(r"^((?:python -m )?ispo (\w+)) (.*)$", cmd)
    if not m or " ... " not in f" {m.group(3)} " or m.group(2) not in ELLIPSIS:
        return cmd
    head, sub, rest = m.groups()
    given = ELLIPSIS[sub]
    if not rest.startswith("..."):  # the input is there: only the options are elided
        given = given.split(" ", 1)[1]
    return f"{head} {rest.replace('...', given, 1)}"


def run_command(cmd: str, cwd: Path, namespace: dict) -> None:
    """Run one shell command of the README here (ispo, python -c) or in a subprocess."""
    argv = shlex.split(cmd, comments=True)
    if argv[0] == "ispo" or argv[:3] == ["python", "-m", "ispo"]:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                main(argv[1:] if argv[0] == "ispo" else argv[3:])
        except SystemExit as exc:
            if exc.code:
                raise AssertionError(f"exit {exc.code}: {err.getvalue()[-1500:]}") from None
        return
    if argv[:2] == ["python", "-c"]:
        exec(compile(argv[2], "<README python -c>", "exec"), dict(namespace))
        return
    res = subprocess.run(argv, cwd=cwd, env=env(), capture_output=True, text=True)
    assert res.returncode == 0, f"exit {res.returncode}: {res.stderr[-1500:]}"


class Session:
    """The README's blocks run in order in one folder and one Python namespace; a test asks
    for its block, and the blocks before it run first if they have not (``-k`` selection)."""

    def __init__(self, stand: Stand, blocks: list[Block]) -> None:
        self.stand, self.blocks = stand, blocks
        self.done: dict[int, BaseException | None] = {}
        self.namespace: dict = {"__name__": "__readme__"}
        self.unset_by: int | None = None  # a Python block skipped for shared data: its line

    def run(self, index: int) -> None:
        for i in range(index + 1):
            if i not in self.done:
                self.done[i] = self._attempt(self.blocks[i])
        if self.done[index] is not None:
            raise self.done[index]

    def _attempt(self, block: Block) -> BaseException | None:
        try:
            self._run(block)
        except BaseException as exc:  # kept for the block's own test (pytest.skip too)
            return exc
        return None

    def _run(self, block: Block) -> None:
        if block.skip:
            pytest.skip(f"README.md:{block.line} marked not runnable: {block.skip}")
        if self.stand.needs_shared(block.text):
            if block.lang == "python":
                self.unset_by = self.unset_by or block.line
            pytest.skip(f"README.md:{block.line} needs ../shared/data (Kang, V1 dictionaries)")
        if block.lang == "python" and self.unset_by is not None:
            pytest.skip(
                f"README.md:{block.line} uses the names of README.md:{self.unset_by}, which needs "
                "../shared/data"
            )
        cwd = os.getcwd()
        os.chdir(self.stand.root)
        try:
            if block.lang == "python":
                code = self.stand.substitute(block.text)
                exec(compile(code, f"README.md:{block.line}", "exec"), self.namespace)
            else:
                self._run_shell(block)
        finally:
            os.chdir(cwd)

    def _run_shell(self, block: Block) -> None:
        for line, cmd in commands(block):
            why = next((r for p, r in SKIP_LINES.items() if re.search(p, cmd)), None)
            if why is not None:
                continue
            plain = shlex.join(shlex.split(cmd, comments=True))  # no comment, one line
            ran = self.stand.substitute(expand_ellipsis(plain))
            try:
                run_command(ran, self.stand.root, self.namespace)
            except AssertionError as exc:
                raise AssertionError(
                    f"README.md:{line}: `{cmd}` (run as `{ran}`) failed: {exc}\nFix the "
                    "README, or add a substitution / skip marker in tests/test_readme.py"
                ) from None


BLOCKS = readme_blocks()


@pytest.fixture(scope="module")
def session(stand) -> Session:
    return Session(stand, BLOCKS)


def test_the_readme_has_runnable_blocks():
    assert sum(b.lang == "python" for b in BLOCKS) >= 2
    assert sum(b.lang == "bash" and not b.skip for b in BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[b.id for b in BLOCKS])
def test_readme_block_runs(session, index):
    session.run(index)


if __name__ == "__main__":  # list what would run: python tests/test_readme.py
    for b in BLOCKS:
        print(b.id, "skip: " + b.skip if b.skip else "", *(c for _, c in commands(b)), sep="\n  ")
    sys.exit(0)
