"""Render a report to self-contained HTML, Markdown, CSV, LaTeX and plain text.

Every string that comes from data (model names, subjects, targets, notes) passes through the escaper of its
output format: ``html.escape`` for HTML, backslash escapes for what Markdown would read as markup, LaTeX escapes for .tex; the HTML has
no scripts and no external resources (plots are inline base64 PNGs).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
from dataclasses import dataclass, field
from typing import Any

from editdecay.report.findings import Finding
from editdecay.report.plots import Figure, Skipped
from editdecay.report.tables import Table, format_value


@dataclass
class Report:
    title: str
    source: str
    overview: list[tuple[str, str]]  # (label, value) pairs
    findings: list[Finding]
    tables: list[Table]
    figures: list[Figure | Skipped]
    notes: list[str] = field(default_factory=list)
    about: list[tuple[str, str]] = field(default_factory=list)  # (grid name, its description)


# --- escaping ---------------------------------------------------------------------------------------------

def esc_html(value: Any) -> str:
    return html.escape(str(value), quote=True)


# Only what CommonMark/GFM would read as markup, so report.md also reads cleanly as plain text
# ("fine-tuning", "demo-out/results.db", "-0.12", "M_ed_ft", "p < 0.05" stay as they are):
_MD_INLINE = re.compile(
    r"""[`*\[\]|~$]"""  # code spans, emphasis, links/images, table cells, strikethrough, math
    r"""|\\(?=[!-/:-@\[-`{-~]|$)"""  # a backslash that would escape what follows (or the template's next char)
    r"""|(?<![^\W_])_|_(?![^\W_])"""  # underscores, except between two letters/digits (never emphasis there)
    r"""|<(?=[A-Za-z/!?])"""  # raw HTML and autolinks
    r"""|&(?=#?\w+;)"""  # entity and character references
    r"""|(?:(?<=\s)|^)#(?=#*\s*$)"""  # a trailing run of '#' that would close an ATX heading
)
# at the start of a line: headings, block quotes, list items, setext underlines, ordered list markers
_MD_BLOCK_START = re.compile(r"^(?:[#>+=-]|\d+(?=[.)]))")


def esc_md(value: Any, line_start: bool = False) -> str:
    """Backslash-escape the characters Markdown would read as markup in ``value`` (newlines become spaces).

    ``line_start``: the text starts a line or a list item, so block markers at its start are escaped too.
    """
    text = _MD_INLINE.sub(lambda m: "\\" + m.group(0), str(value).replace("\r", " ").replace("\n", " "))
    if line_start:
        text = text.lstrip(" ")  # four leading spaces would start a code block
        text = _MD_BLOCK_START.sub(lambda m: m.group(0) + "\\" if m.group(0)[0].isdigit() else "\\" + m.group(0),
                                   text, count=1)
    return text


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
          ">": r"\textgreater{}", "|": r"\textbar{}"}


def esc_latex(value: Any) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(value).replace("\n", " "))


def _cell(row: dict[str, Any], key: str, kind: str) -> str:
    return format_value(row.get(key), kind)


def _constants(constant: list[tuple[str, Any]]) -> str:
    return ", ".join(f"{label} = {value}" for label, value in constant)


def _unit(kind: str) -> str:
    return " %" if kind == "pct" else ""


# --- CSV / LaTeX ------------------------------------------------------------------------------------------

def table_csv(table: Table) -> str:
    """Raw values (fractions as stored, full precision), one header row of column keys."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([c.key for c in table.columns])
    for row in table.rows:
        out = []
        for c in table.columns:
            v = row.get(c.key)
            out.append("" if v is None or (isinstance(v, float) and math.isnan(v)) else
                       repr(float(v)) if isinstance(v, float) else str(v))
        writer.writerow(out)
    return buf.getvalue()


def table_latex(table: Table) -> str:
    align = "".join("l" if c.kind == "str" else "r" for c in table.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{align}}}", r"\hline",
             " & ".join(esc_latex(c.label + _unit(c.kind)) for c in table.columns) + r" \\", r"\hline"]
    for row in table.rows:
        lines.append(" & ".join(esc_latex(_cell(row, c.key, c.kind)) for c in table.columns) + r" \\")
    lines += [r"\hline", r"\end{tabular}", rf"\caption{{{esc_latex(table.title)}. {esc_latex(table.caption)}}}",
              rf"\label{{tab:{re.sub('[^A-Za-z0-9:-]', '-', table.name)}}}", r"\end{table}", ""]
    return "\n".join(lines)


# --- HTML -------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0 .3em;font-size:.85em}
th,td{border:1px solid #ddd;padding:3px 7px}th{background:#f2f4f7;text-align:left}td.num{text-align:right}
tr:nth-child(even) td{background:#fafbfc}.caption{color:#555;font-size:.85em;max-width:1000px}
.verdict{font-weight:bold;padding:1px 6px;border-radius:3px}.supported{background:#d8f3dc}
.not-supported{background:#ffd6d6}.not-enough-data{background:#eee}.finding{margin:.6em 0}
.evidence{color:#444;font-size:.88em}.skipped{color:#777;font-style:italic}.wrap{overflow-x:auto}
img{max-width:100%;border:1px solid #eee}dt{font-weight:bold;float:left;width:11em}dd{margin-left:12em}
"""


def table_html(table: Table) -> str:
    out = [f'<h3 id="{esc_html(table.name)}">{esc_html(table.title)}</h3>',
           f'<p class="caption">{esc_html(table.caption)}</p>']
    if not table.rows:
        out.append('<p class="skipped">No rows: the store holds no data for this table.</p>')
        return "\n".join(out)
    rows, cut = table.shown()
    columns, constant = table.display_columns()
    if constant:
        out.append(f'<p class="caption">Every row: {esc_html(_constants(constant))}.</p>')
    if cut:
        out.append(f'<p class="caption">{esc_html(cut)}</p>')
    out.append('<div class="wrap"><table><thead><tr>')
    out += [f"<th>{esc_html(c.label + _unit(c.kind))}</th>" for c in columns]
    out.append("</tr></thead><tbody>")
    for row in rows:
        cells = "".join(
            f'<td{"" if c.kind == "str" else " class=num"}>{esc_html(_cell(row, c.key, c.kind))}</td>'
            for c in columns)
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def render_html(report: Report) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc_html(report.title)}</title>", f"<style>{_CSS}</style></head><body>",
             f"<h1>{esc_html(report.title)}</h1>", "<dl>"]
    parts += [f"<dt>{esc_html(k)}</dt><dd>{esc_html(v)}</dd>" for k, v in report.overview]
    parts.append("</dl>")
    parts += [f'<p class="about"><b>{esc_html(name)}</b>: {esc_html(text)}</p>' for name, text in report.about]
    parts.append("<h2>Findings</h2>")
    for f in report.findings:
        cls = f.verdict.replace(" ", "-")
        margin = f.margin_verdict.replace(" ", "-")
        parts.append(f'<div class="finding"><span class="verdict {esc_html(cls)}">{esc_html(f.verdict)}</span> '
                     f"{esc_html(f.claim)}<div class=\"evidence\">{esc_html(f.evidence)}</div>"
                     f'<div class="evidence">on ES magnitude: <span class="verdict {esc_html(margin)}">'
                     f"{esc_html(f.margin_verdict)}</span> {esc_html(f.margin_evidence)}</div></div>")
    parts.append("<h2>Tables</h2>")
    parts += [table_html(t) for t in report.tables if t.name != "findings"]
    parts.append("<h2>Figures</h2>")
    for fig in report.figures:
        parts.append(f"<h3>{esc_html(fig.title)}</h3>")
        if isinstance(fig, Skipped):
            parts.append(f'<p class="skipped">Not shown: {esc_html(fig.reason)}.</p>')
            continue
        data = base64.b64encode(fig.png).decode("ascii")
        parts.append(f'<img alt="{esc_html(fig.title)}" src="data:image/png;base64,{data}">')
        parts.append(f'<p class="caption">{esc_html(fig.caption)}</p>')
    if report.notes:
        parts.append("<h2>Notes</h2><ul>")
        parts += [f"<li>{esc_html(n)}</li>" for n in report.notes]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --- Markdown ---------------------------------------------------------------------------------------------

def table_md(table: Table) -> str:
    out = [f"### {esc_md(table.title)}", "", f"_{esc_md(table.caption)}_", ""]
    if not table.rows:
        return "\n".join(out + ["No rows: the store holds no data for this table.", ""])
    rows, cut = table.shown()
    columns, constant = table.display_columns()
    if constant:
        out += [f"Every row: {esc_md(_constants(constant))}.", ""]
    if cut:
        out += [esc_md(cut, line_start=True), ""]
    out.append("| " + " | ".join(esc_md(c.label + _unit(c.kind)) for c in columns) + " |")
    out.append("| " + " | ".join("---" if c.kind == "str" else "---:" for c in columns) + " |")
    for row in rows:
        out.append("| " + " | ".join(esc_md(_cell(row, c.key, c.kind)) for c in columns) + " |")
    return "\n".join(out + [""])


def render_markdown(report: Report, figure_dir: str = "figures") -> str:
    out = [f"# {esc_md(report.title)}", ""]
    out += [f"- **{esc_md(k)}**: {esc_md(v)}" for k, v in report.overview]
    for name, text in report.about:
        out += ["", f"**{esc_md(name)}**: {esc_md(text)}"]
    out += ["", "## Findings", ""]
    out += [f"- **{esc_md(f.verdict)}**: {esc_md(f.claim)}. {esc_md(f.evidence)}\n  - on ES magnitude: "
            f"**{esc_md(f.margin_verdict)}**: {esc_md(f.margin_evidence)}" for f in report.findings]
    out += ["", "## Tables", ""]
    out += [table_md(t) for t in report.tables if t.name != "findings"]
    out += ["## Figures", ""]
    for fig in report.figures:
        out.append(f"### {esc_md(fig.title)}")
        out.append("")
        if isinstance(fig, Skipped):
            out += [f"_Not shown: {esc_md(fig.reason)}._", ""]
        else:
            out += [f"![{esc_md(fig.title)}]({figure_dir}/{fig.name}.png)", "", esc_md(fig.caption, line_start=True), ""]
    if report.notes:
        out += ["## Notes", ""] + [f"- {esc_md(n, line_start=True)}" for n in report.notes] + [""]
    return "\n".join(out)


# --- terminal ---------------------------------------------------------------------------------------------

def _clean(text: str) -> str:
    """Drop control characters (terminal escape sequences) from data strings printed to a terminal."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


def table_text(table: Table, max_width: int = 40) -> str:
    columns, constant = table.display_columns()
    header = [c.label + _unit(c.kind) for c in columns]
    shown, cut = table.shown()
    if table.text_records:  # sentences: every cell whole, one block per row
        blocks = [f"== {table.title} =="]
        for r in shown:
            first, *rest = columns
            blocks.append(_clean(_cell(r, first.key, first.kind)))
            blocks += [_clean(f"    {c.label}: {_cell(r, c.key, c.kind)}") for c in rest]
        return "\n".join(blocks + ([cut] if cut else []))
    rows = [[_clean(_cell(r, c.key, c.kind))[:max_width] for c in columns] for r in shown]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    right = [c.kind != "str" for c in columns]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True))

    out = [f"== {table.title} =="]
    if constant:
        out.append(_clean(f"every row: {_constants(constant)}"))
    out += [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows] or ["(no rows)"]
    if cut:
        out.append(cut)
    return "\n".join(out)


def render_text(report: Report, table_names: tuple[str, ...] | None = None) -> str:
    out = [_clean(report.title), ""]
    out += [_clean(f"{name}: {text}") + "\n" for name, text in report.about]
    out += [_clean(f"runs: {text}") + "\n" for name, text in report.overview if name == "runs" and "," in text]
    out += [f"[{f.verdict}] {_clean(f.claim)}\n    {_clean(f.evidence)}\n    on ES magnitude: "
            f"[{f.margin_verdict}] {_clean(f.margin_evidence)}" for f in report.findings]
    for table in report.tables:
        if table_names is None or table.name in table_names:
            out += ["", table_text(table)]
    if report.notes:
        out += ["", "Notes:"] + [f"- {_clean(n)}" for n in report.notes]
    return "\n".join(out) + "\n"
