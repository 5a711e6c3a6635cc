"""Markdown from Jinja2 templates, and one self-contained HTML page from that Markdown.

Every report (``ispo report``, and ``ispo evaluate``'s ``metrics.md``) is written as Markdown by
the templates in ``ispo/reporting/templates/`` (package data), from plain data prepared by a
small function per section; the HTML is the same Markdown rendered by markdown-it-py (CommonMark
with tables), with the figures embedded as data URIs and a style sheet, so the two can never
tell different stories.
"""

from __future__ import annotations

import base64
import math
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]])")


def fmt(value: Any, digits: int = 4) -> str:
    """A table-friendly string: thousands separators, ``digits`` significant digits, '-' for
    missing values."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 10**digits:
            return f"{value:,.0f}"
        if abs(value) < 1e-3:
            return f"{value:.{max(digits - 2, 1)}e}"
        return f"{value:.{digits}g}"
    return str(value)


def text(value: Any) -> str:
    """Data shown in running Markdown text: backslashes, backticks, stars and brackets escaped,
    so a name or a formula reads as itself, not as markup."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", fmt(value))


def cell(value: Any) -> str:
    """A table cell: :func:`text`, with ``|`` escaped and on one line."""
    return text(value).replace("|", "\\|").replace("\n", " ")


def shown_path(path: str | os.PathLike | None) -> str:
    """A path as a report names it: relative to where the command runs, never a machine's
    absolute path (``-`` when there is none). Values that are not paths pass unchanged."""
    if path is None:
        return "-"
    p = str(path)
    return os.path.relpath(p) if os.path.isabs(p) else p


@cache
def _environment():
    from jinja2 import Environment, PackageLoader

    env = Environment(
        loader=PackageLoader("ispo.reporting", "templates"),
        autoescape=False,  # Markdown, not HTML: values are escaped by the text/cell filters
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt=fmt, text=text, cell=cell, path=shown_path)
    return env


def render_markdown(template: str, **context: Any) -> str:
    """The Markdown of ``template`` with ``context``; blocks one blank line apart."""
    md = _environment().get_template(template).render(**context)
    return re.sub(r"\n{3,}", "\n\n", md).strip() + "\n"


def _image_rule(base_dir: Path | None):
    """markdown-it's image renderer: the file embedded as a data URI, its alt text as caption."""
    from html import escape

    def render(_renderer, tokens, idx, _options, _env) -> str:
        token = tokens[idx]
        src = token.attrGet("src") or ""
        alt = "".join(t.content for t in token.children or [])
        file = base_dir / src if base_dir is not None else None
        if file is not None and file.is_file():
            src = "data:image/png;base64," + base64.b64encode(file.read_bytes()).decode()
        return (
            f'<img src="{escape(src)}" alt="{escape(alt)}">'
            f'<span class="caption">{escape(alt)}</span>'
        )

    return render


def markdown_to_html(markdown: str, *, base_dir: str | Path | None = None, title: str) -> str:
    """A standalone page of ``markdown``; images under ``base_dir`` are embedded."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.add_render_rule("image", _image_rule(None if base_dir is None else Path(base_dir)))
    body = md.render(markdown)
    return _environment().get_template("page.html.j2").render(title=title, body=body)
