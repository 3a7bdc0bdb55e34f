"""One self-contained HTML report (figures embedded) from sections of tables, figures and text.

The quickstart (:mod:`lensml.quickstart`) builds a :class:`ReportSection` per pipeline from the
summary that pipeline's ``quickstart_section`` returns, and :func:`write_html_report` writes
``report.html``: every PNG embedded as a base64 data URI, so the file can be mailed or opened
offline; every number also lives in the JSON next to it.

A section summary may carry these optional keys (all JSON-able):

``"title"`` (str), ``"text"`` (str, plain text, paragraphs split on blank lines),
``"tables"`` (list of ``{"caption": str, "columns": [str], "rows": [[cell, ...]]}``),
``"figures"`` (list of PNG paths, relative to the report directory or absolute).
"""

from __future__ import annotations

import base64
import html
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ReportSection", "format_cell", "section_from_summary", "write_html_report"]


@dataclass
class ReportSection:
    """One section of the report.

    Attributes
    ----------
    key : str
        Anchor name (e.g. ``"clusters"``).
    title : str
    text : str
        Plain text; blank lines separate paragraphs.
    tables : list of dict
        ``{"caption", "columns", "rows"}`` each.
    figures : list of Path
        PNG files to embed, in order.
    """

    key: str
    title: str
    text: str = ""
    tables: list[dict[str, Any]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


def format_cell(value: Any) -> str:
    """A table cell as text: floats with 4 significant digits, None/NaN as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.4g}"
    return str(value)


def section_from_summary(key: str, summary: Mapping[str, Any], root: Path) -> ReportSection:
    """Build a section from a pipeline summary (see the module docstring for its keys)."""
    figures = []
    for f in summary.get("figures", []) or []:
        p = Path(f)
        figures.append(p if p.is_absolute() else root / p)
    return ReportSection(
        key=key,
        title=str(summary.get("title", key)),
        text=str(summary.get("text", "")),
        tables=list(summary.get("tables", []) or []),
        figures=figures,
    )


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #aaa; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: bold; padding: 0.3em 0; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 520px; border: 1px solid #ddd; }
figcaption { font-size: 0.8em; color: #555; }
nav a { margin-right: 1em; } .meta { color: #666; font-size: 0.85em; }
"""


def _table_html(table: Mapping[str, Any]) -> str:
    cols = [html.escape(str(c)) for c in table.get("columns", [])]
    out = ["<table>"]
    if table.get("caption"):
        out.append(f"<caption>{html.escape(str(table['caption']))}</caption>")
    out.append("<tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
    for row in table.get("rows", []):
        cells = "".join(f"<td>{html.escape(format_cell(v))}</td>" for v in row)
        out.append(f"<tr>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _figure_html(path: Path) -> str:
    if not path.is_file():
        raise ValueError(f"report: figure {path} does not exist")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    return (
        f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
        f"<figcaption>{name}</figcaption></figure>"
    )


def write_html_report(
    path: str | Path,
    sections: Sequence[ReportSection],
    title: str = "lensml quickstart report",
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a self-contained HTML report atomically and return its path.

    Parameters
    ----------
    path : path
        Output ``.html`` file (its directory must exist or is created).
    sections : sequence of ReportSection
    title : str
    meta : mapping, optional
        Shown under the title (version, seed, device, run time...).

    Raises
    ------
    ValueError
        A listed figure that does not exist.
    """
    from lensml.quickstart import _atomic_write_bytes

    path = Path(path)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    info = dict(meta or {})
    info.setdefault("written", time.strftime("%Y-%m-%d %H:%M:%S"))
    parts.append(
        '<p class="meta">'
        + " · ".join(
            f"{html.escape(str(k))}: {html.escape(format_cell(v))}" for k, v in info.items()
        )
        + "</p>"
    )
    parts.append(
        "<nav>"
        + "".join(f'<a href="#{html.escape(s.key)}">{html.escape(s.title)}</a>' for s in sections)
        + "</nav>"
    )
    for s in sections:
        parts.append(f'<section id="{html.escape(s.key)}"><h2>{html.escape(s.title)}</h2>')
        for para in [p.strip() for p in s.text.split("\n\n") if p.strip()]:
            parts.append(f"<p>{html.escape(para)}</p>")
        parts.extend(_table_html(t) for t in s.tables)
        parts.extend(_figure_html(f) for f in s.figures)
        parts.append("</section>")
    parts.append("</body></html>")
    _atomic_write_bytes(path, "\n".join(parts).encode("utf-8"))
    return path
