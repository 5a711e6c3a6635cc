"""``ispo report``: one Markdown + HTML report from benchmark, evaluate, fine-tuning, tune,
perturb and perturb-stats results.

A result's kind is told by its files (each kind's module in :mod:`ispo.reporting.sections`):

============ ==================================================================================
benchmark    ``results.json`` (``ispo benchmark``: ``{"meta": ..., "rows": [...]}``)
evaluate     ``metrics.json`` of ``ispo evaluate`` (with ``classification``)
finetune     ``metrics.json`` of ``ispo finetune`` (with ``epochs``), and its PNGs
tune         ``summary.json`` of kind ``tune``, ``best.yaml`` or ``study.db`` (``ispo tune``)
perturb      a ``.parquet`` results table with its metadata ``.json`` (``ispo perturb``)
stats        a ``.csv``/``.tsv``/``.parquet`` table of ``ispo perturb-stats``, shown as computed
============ ==================================================================================

A results file can also be passed directly. Each section is a Markdown template filled with the
data its module prepares; the report is ``report.md`` with the figures copied into
``figures/``, and ``report.html``, the same Markdown as one self-contained page
(:mod:`ispo.reporting.render`). Whenever a result was made with random weights, its section,
and the report's top, say that its figures mean nothing biologically. Inputs are named relative
to where the command runs, never by a machine's absolute path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ispo.errors import IspoError
from ispo.reporting.figures import Figures
from ispo.reporting.render import markdown_to_html, render_markdown
from ispo.reporting.sections import Section, benchmark, evaluate, finetune, perturb, stats, tune

#: every kind of result, in the order a folder's results are listed
KINDS: dict[str, ModuleType] = {
    "benchmark": benchmark,
    "evaluate": evaluate,
    "finetune": finetune,
    "tune": tune,
    "perturb": perturb,
    "stats": stats,
}


@dataclass
class Result:
    """One result found in an input: its kind and the path it is read from."""

    kind: str  # a key of KINDS
    path: Path


def _in_folder(path: Path) -> list[Result]:
    return [Result(kind, p) for kind, mod in KINDS.items() for p in mod.finds(path)]


def _file(path: Path) -> list[Result]:
    """The result a file names: its folder's (a marker such as ``results.json``), or itself
    (a perturb results table, a perturb-stats table)."""
    found = [
        r
        for r in _in_folder(path.parent)
        if r.path == path or (r.path == path.parent and path.name in KINDS[r.kind].MARKERS)
    ]
    if not found and path.suffix.lower() in stats.SUFFIXES and not perturb.is_results_table(path):
        found = [Result("stats", path)]  # unreadable as a table: its section says why
    if not found and perturb.is_results_table(path):
        found = [Result("perturb", path)]
    return found


def detect(path: str | Path) -> list[Result]:
    """The results in a folder, or the one a file names (see the module docstring).

    Raises
    ------
    IspoError
        If the path does not exist or holds no recognised result.
    """
    path = Path(path)
    if not path.exists():
        raise IspoError(f"report input {path} does not exist: pass a result folder")
    found = _file(path) if path.is_file() else _in_folder(path)
    if found:
        return found
    if path.is_file():
        raise IspoError(
            f"report input {path} is a file ispo report does not read: pass a result folder, "
            "a perturb .parquet or a perturb-stats table"
        )
    raise IspoError(
        f"{path} holds no ispo result (results.json, metrics.json, tune "
        "summary.json/best.yaml/study.db, a .parquet with its .json, or a perturb-stats "
        "table): pass the folder a command wrote"
    )


def render_report(title: str, results: list[Result], sections: list[Section]) -> str:
    """The report's Markdown: a title, one random-weights warning for all, the contents, and
    every section in the order of the results."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    return render_markdown(
        "report.md.j2",
        title=title,
        any_random=any(s.random_init for s in sections),
        counts=[f"{n} {kind}" for kind, n in counts.items()],
        inputs=[r.path for r in results],
        sections=[render_markdown(s.template, **s.context) for s in sections],
    )


def build_report(
    inputs: list[str | Path],
    out: str | Path,
    *,
    title: str = "ispo report",
    overwrite: bool = False,
    run_config: dict | None = None,
) -> dict[str, Path]:
    """Write ``out/report.md``, ``out/report.html`` (self-contained) and ``out/figures/``.

    Returns
    -------
    dict
        ``{"markdown": path, "html": path, "folder": out}``.

    Raises
    ------
    IspoError
        If no input is given, an input holds no recognised result, or ``out`` exists.
    """
    from ispo.io.write import atomic_output, check_output

    if not inputs:
        raise IspoError("no result folders given: ispo report DIR [DIR...] --out REPORT_DIR")
    out = Path(out)
    check_output(out, overwrite)
    results = [r for p in inputs for r in detect(p)]
    with atomic_output(out, overwrite) as tmp:
        tmp.mkdir()
        figures = Figures(tmp)
        sections = [KINDS[r.kind].section(r.path, figures) for r in results]
        markdown = render_report(title, results, sections)
        (tmp / "report.md").write_text(markdown)
        (tmp / "report.html").write_text(markdown_to_html(markdown, base_dir=tmp, title=title))
        if run_config is not None:
            from ispo.config import save_run_config

            save_run_config(out, run_config, command="report", path=tmp / "config.yaml")
    return {"markdown": out / "report.md", "html": out / "report.html", "folder": out}
