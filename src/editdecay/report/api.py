"""Build a report from a results store and write it as HTML, Markdown, CSV, LaTeX (or text for a terminal)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from editdecay.errors import ConfigError
from editdecay.report import findings as findings_mod
from editdecay.report import plots, published, render, tables
from editdecay.report import shift as shift_mod
from editdecay.report.load import Results, load_results
from editdecay.util.io import atomic_write_bytes, atomic_write_json, atomic_write_text

MAIN_TABLES = ("side_by_side", "edit_metrics", "relative_decrease_by_ft_type", "relative_decrease_by_model", "efr",
               "categories", "selective_layers")


def _overview(res: Results) -> list[tuple[str, str]]:
    def values(attr: str) -> str:
        return ", ".join(sorted({str(getattr(r, attr)) for r in res.runs})) or "–"

    finished = sum(r.status == "done" for r in res.runs)
    runs = str(len(res.runs)) if finished == len(res.runs) else (
        f"{len(res.runs)}, of which {finished} finished: a grid still running or cut short, so every finding and "
        "table rests on the evaluations completed so far")
    return [("store", res.path), ("runs", runs), ("models", values("model")),
            ("methods", values("method")), ("edit data", values("edit_data")), ("#edits", values("n_edits")),
            ("fine-tuning", values("ft_type")), ("layer selections", values("layer_selection")),
            ("fine-tuning data", values("ft_data")), ("seeds", values("seed"))]


def build_report(results: str | os.PathLike | Results, with_figures: bool = True, alpha: float = 0.05,
                 min_pairs: int = 3, seed: int = 0) -> render.Report:
    """Tables, findings and (optionally) figures of one results store (and nothing else: the analyses that
    need artifacts are read from the store, where ``editdecay analyze`` wrote them)."""
    res = results if isinstance(results, Results) else load_results(results)
    findings = findings_mod.all_findings(res, alpha=alpha, min_pairs=min_pairs)
    all_tables = tables.all_tables(res, findings_mod.findings_table(findings), seed=seed)
    all_tables.insert(1, published.side_by_side_table(res, findings))
    shift = shift_mod.shift_table(res)
    if shift.rows:  # only stores with an activation-shift analysis (`editdecay analyze shift --store`)
        all_tables.insert(-1, shift)
    notes = list(res.notes)
    figures: list[plots.Figure | plots.Skipped] = []
    if with_figures:
        figures, fig_notes, _ = plots.all_figures(res)
        notes += fig_notes
    if not res.runs:
        notes.append("The store holds no run with a finished evaluation yet.")
    notes.append(f"Significance level {alpha}; across-run tests need at least {min_pairs} paired runs, otherwise "
                 f"per-edit McNemar tests are used. An edit succeeds when its per-record {tables.SUCCESS_RULE}.")
    return render.Report("Do edits survive fine-tuning? — editdecay report", res.path, _overview(res), findings,
                         all_tables, figures, notes, about=sorted(res.descriptions.items()))


def write_report(results: str | os.PathLike | Results, out: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    """Write DIR/report.html, DIR/report.md, DIR/figures/*.png, DIR/tables/*.csv and *.tex; returns the paths."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    report = build_report(results, **kwargs)
    written: dict[str, Any] = {"tables": [], "figures": []}
    for table in report.tables:
        csv_path, tex_path = out / "tables" / f"{table.name}.csv", out / "tables" / f"{table.name}.tex"
        atomic_write_text(csv_path, render.table_csv(table))
        atomic_write_text(tex_path, render.table_latex(table))
        written["tables"].append(str(csv_path))
    for fig in report.figures:
        if isinstance(fig, plots.Figure):
            path = out / "figures" / f"{fig.name}.png"
            atomic_write_bytes(path, fig.png)
            written["figures"].append(str(path))
    atomic_write_text(out / "report.md", render.render_markdown(report))
    atomic_write_text(out / "report.html", render.render_html(report))
    written["html"], written["markdown"] = str(out / "report.html"), str(out / "report.md")
    atomic_write_json(out / "findings.json", [
        {"claim": f.claim, "verdict": f.verdict, "evidence": f.evidence,
         "tests": [t.__dict__ for t in f.tests], "margin_verdict": f.margin_verdict,
         "margin_evidence": f.margin_evidence} for f in report.findings])
    return written


def report_text(results: str | os.PathLike | Results, **kwargs: Any) -> str:
    """The findings and main tables as plain text (no figures are drawn)."""
    report = build_report(results, with_figures=False, **kwargs)
    return render.render_text(report, MAIN_TABLES)
