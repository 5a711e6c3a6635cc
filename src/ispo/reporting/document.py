"""The small document model every report is built from: headings, paragraphs, notes, tables,
images and code, rendered as Markdown and as one self-contained HTML file."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def fmt(value: Any, digits: int = 4) -> str:
    """A table-friendly string: thousands separators, ``digits`` significant digits, '-' for
    missing values."""
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


@dataclass
class Document:
    """An ordered list of blocks, rendered as Markdown or as a self-contained HTML page."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 1) -> Document:
        self.blocks.append(("heading", (min(max(level, 1), 6), text)))
        return self

    def paragraph(self, text: str) -> Document:
        self.blocks.append(("paragraph", text))
        return self

    def note(self, text: str) -> Document:
        """A warning the reader must not miss (random weights, synthetic data)."""
        self.blocks.append(("note", text))
        return self

    def table(self, headers: list[str], rows: list[list[Any]]) -> Document:
        self.blocks.append(
            (
                "table",
                (
                    [str(h) for h in headers],
                    [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows],
                ),
            )
        )
        return self

    def image(self, path: str, alt: str) -> Document:
        """An image, ``path`` relative to where the document is written."""
        self.blocks.append(("image", (path, alt)))
        return self

    def code(self, text: str, language: str = "") -> Document:
        self.blocks.append(("code", (text, language)))
        return self

    def extend(self, other: Document) -> Document:
        self.blocks.extend(other.blocks)
        return self

    def to_markdown(self) -> str:
        out: list[str] = []
        for kind, b in self.blocks:
            if kind == "heading":
                out.append(f"{'#' * b[0]} {b[1]}")
            elif kind == "paragraph":
                out.append(b)
            elif kind == "note":
                out.append(f"> **{b}**")
            elif kind == "table":
                headers, rows = b
                out.append(
                    "\n".join(
                        [
                            "| " + " | ".join(_md_cell(h) for h in headers) + " |",
                            "|" + "|".join("---" for _ in headers) + "|",
                        ]
                        + ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
                    )
                )
            elif kind == "image":
                out.append(f"![{b[1]}]({b[0]})")
            elif kind == "code":
                out.append(f"```{b[1]}\n{b[0].rstrip()}\n```")
        return "\n\n".join(out) + "\n"

    def to_html(self, base_dir: str | Path | None = None, title: str = "ispo report") -> str:
        """A standalone page; images under ``base_dir`` are embedded as data URIs."""
        body: list[str] = []
        for kind, b in self.blocks:
            if kind == "heading":
                body.append(f"<h{b[0]}>{html.escape(b[1])}</h{b[0]}>")
            elif kind == "paragraph":
                body.append(f"<p>{html.escape(b)}</p>")
            elif kind == "note":
                body.append(f'<div class="note">{html.escape(b)}</div>')
            elif kind == "table":
                headers, rows = b
                head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
                trs = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                    for r in rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            elif kind == "image":
                src = b[0]
                file = Path(base_dir) / src if base_dir is not None else None
                if file is not None and file.is_file():
                    src = "data:image/png;base64," + base64.b64encode(file.read_bytes()).decode()
                body.append(
                    f'<figure><img src="{html.escape(src)}" alt="{html.escape(b[1])}">'
                    f"<figcaption>{html.escape(b[1])}</figcaption></figure>"
                )
            elif kind == "code":
                body.append(f"<pre><code>{html.escape(b[0])}</code></pre>")
        return _HTML.format(title=html.escape(title), body="\n".join(body))


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.92em; display: block;
        max-width: 100%; overflow-x: auto; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
tr:nth-child(even) td {{ background: #fafafa; }}
.note {{ border-left: 4px solid #d9534f; background: #fdf1f0; padding: 0.6em 1em;
         margin: 1em 0; font-weight: 600; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #666; font-size: 0.9em; }}
pre {{ background: #f6f8fa; padding: 0.8em; overflow-x: auto; }}
</style></head>
<body>
{body}
</body></html>
"""


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
