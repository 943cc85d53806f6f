"""The report's figures (matplotlib, Agg backend, PNG bytes), each with a caption and the note when skipped.

Every figure is drawn from the results store alone. A figure whose inputs the store lacks (no trajectories, no
per-layer weight change or target frequency written by ``editdecay analyze``, an older store without the
analysis tables) is skipped with a note in the report: a report never fails because an optional input is absent.
Target frequency is defined in :mod:`editdecay.analyze.frequency`, weight change in :mod:`editdecay.analyze.weights`.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from editdecay import stats
from editdecay.report.load import Results, Run
from editdecay.report.tables import group_runs, run_decay


@dataclass
class Figure:
    name: str
    title: str
    caption: str
    png: bytes


@dataclass
class Skipped:
    name: str
    title: str
    reason: str


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _setting(run: Run) -> tuple:
    """What a panel holds one of: model, edit data, number of edits and fine-tuning data (never pooled)."""
    return (run.model, run.edit_data, run.n_edits, run.ft_data)


def _setting_label(setting: tuple, ft_type: str | None = None) -> str:
    model, edit_data, n_edits, ft_data = setting
    return f"{model} / {edit_data} {n_edits} / {ft_type + ' ' if ft_type else ''}on {ft_data}"


def _sorted_settings(settings: Any) -> list[tuple]:
    return sorted(set(settings), key=lambda t: tuple(str(x) for x in t))


def _full_layer_runs(res: Results) -> list[Run]:
    return [r for r in res.runs if r.layer_selection == "all"] or list(res.runs)


def survival_cells(res: Results) -> dict[tuple[tuple, str, str], list[float]]:
    """((model, edit data, #edits, ft data), method, ft type) -> ES survival of each full-layer run (one per seed):
    the cells of :func:`survival_heatmap`."""
    cells: dict[tuple[tuple, str, str], list[float]] = defaultdict(list)
    for run in _full_layer_runs(res):
        d = run_decay(res, run, "efficacy")
        if d is not None and not math.isnan(d.survival):
            cells[(_setting(run), run.method, run.ft_type)].append(d.survival)
    return cells


def survival_heatmap(res: Results, per_row: int = 3) -> Figure | Skipped:
    """Mean ES survival (1 − EFR) per method × fine-tuning type, one panel per model, edit data and count and
    fine-tuning data (never pooled across them), ``per_row`` panels to a row."""
    title = "Edit survival by method and fine-tuning type"
    cells = survival_cells(res)
    if not cells:
        return Skipped("survival_heatmap", title, "no run has per-edit results for both M_ed and M_ed_ft")
    plt = _plt()
    settings = _sorted_settings(k[0] for k in cells)
    methods = sorted({k[1] for k in cells})
    fts = sorted({k[2] for k in cells})
    n_rows, n_cols = -(-len(settings) // per_row), min(per_row, len(settings))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 + 1.5 * len(fts) * n_cols, (1.2 + 0.6 * len(methods)) * n_rows),
                             squeeze=False, sharey=True, layout="constrained")
    for k, ax in enumerate(axes.flat):
        if k >= len(settings):
            ax.set_visible(False)
            continue
        setting = settings[k]
        grid = np.full((len(methods), len(fts)), np.nan)
        for i, method in enumerate(methods):
            for j, ft in enumerate(fts):
                vals = cells.get((setting, method, ft))
                if vals:
                    grid[i, j] = 100.0 * float(np.mean(vals))
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for i in range(len(methods)):
            for j in range(len(fts)):
                text = "–" if np.isnan(grid[i, j]) else f"{grid[i, j]:.0f}%"
                ax.text(j, i, text, ha="center", va="center", color="white" if grid[i, j] < 60 else "black")
        ax.set_xticks(range(len(fts)), fts)
        ax.set_yticks(range(len(methods)), methods)
        ax.set_title(_setting_label(setting), fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="ES survival %")
    return Figure("survival_heatmap", title,
                  "Share of successful edits that still succeed after fine-tuning (1 − EFR, efficacy), mean over "
                  "seeds; full-layer fine-tuning runs; a panel per model, edit data and number of edits and "
                  "fine-tuning data.", _png(fig))


LAYER_COLORS = {"all": "tab:blue", "edited": "tab:red", "non-edited": "tab:green"}
METHOD_STYLES = ("-", "--", ":", "-.")


def trajectory_lines(res: Results, metric: str) -> dict[tuple, dict[int, list[float]]]:
    """((model, edit data, #edits, ft data), ft type, method, layer selection) -> step -> the values of the runs
    (one per seed) at that step: the lines of :func:`trajectories`."""
    lines: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in res.runs:
        stage = res.edited_ft_stage(run)
        for p in res.trajectories.get(stage.stage_id, []) if stage else []:
            if metric in p and not math.isnan(p[metric]):
                lines[(_setting(run), run.ft_type, run.method, run.layer_selection)][int(p["step"])].append(p[metric])
    return lines


def trajectories(res: Results, metric: str = "efficacy") -> Figure | Skipped:
    """Efficacy (or its magnitude P(new) − P(true)) over fine-tuning steps: a row per model, edit data and count
    and fine-tuning data (the means of different edit sets are never pooled), a column per ft type, a line per
    method × layer selection. The magnitude shows decay that has not yet flipped any edit."""
    magnitude = metric.endswith("_magnitude")
    name = "trajectories" if metric == "efficacy" else f"trajectories_{metric}"
    title = "Decay over fine-tuning steps" + (" (ES magnitude)" if magnitude else "")
    lines = trajectory_lines(res, metric)
    if not lines:
        return Skipped(name, title, f"no fine-tuning stage of an edited model recorded a {metric} trajectory")
    plt = _plt()
    settings = _sorted_settings(k[0] for k in lines)
    fts = sorted({k[1] for k in lines})
    methods = sorted({k[2] for k in lines})
    fig, axes = plt.subplots(len(settings), len(fts), figsize=(3.6 * len(fts) + 1.5, 2.8 * len(settings)),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    for (setting, ft, method, layers), steps in sorted(lines.items(), key=lambda kv: str(kv[0])):
        ax = axes[settings.index(setting)][fts.index(ft)]
        xs = sorted(steps)
        ax.plot(xs, [100.0 * float(np.mean(steps[s])) for s in xs], marker="os^D"[methods.index(method) % 4], ms=3,
                color=LAYER_COLORS.get(layers, "tab:purple"), ls=METHOD_STYLES[methods.index(method) % 4],
                label=f"{method}, {layers} layers")
    drawn = {(k[0], k[1]) for k in lines}
    for i, setting in enumerate(settings):
        for j, ft in enumerate(fts):
            ax = axes[i][j]
            ax.set_title(_setting_label(setting, ft), fontsize=8)
            if (setting, ft) not in drawn:  # no such run: say so rather than draw an empty frame
                ax.text(0.5, 0.5, "not in this grid", ha="center", va="center", transform=ax.transAxes,
                        fontsize=8, color="0.5")
            if not magnitude:
                ax.set_ylim(-2, 102)
            if i == len(settings) - 1:
                ax.set_xlabel("fine-tuning step")
            if j == 0:
                ax.set_ylabel(f"{metric.replace('_', ' ')} " + ("(points)" if magnitude else "%"))
    seen: dict[str, Any] = {}
    for row in axes:
        for ax in row:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="outside right center", fontsize=7)
    what = ("ES magnitude P(new) − P(true) × 100, mean over the tracked edits" if magnitude
            else f"{metric.capitalize()} of the tracked edits")
    return Figure(name, title, f"{what} during fine-tuning, mean over seeds; a row per model, edit data and number "
                  "of edits and fine-tuning data, a column per fine-tuning type; colour: layer selection, line "
                  "style: editing method.", _png(fig))


FT_MARKERS = ("o", "s", "^", "D", "v", "P")


def tradeoff_points(res: Results) -> dict[tuple[str, str, str, str], list[tuple[float, float]]]:
    """("model / edit data #edits / on ft data", method, ft type, layer selection) -> (downstream cost, ES drop)
    in points, one per run (seed): what :func:`tradeoff` draws, never pooled across models or data."""
    points: dict[tuple[str, str, str, str], list[tuple[float, float]]] = defaultdict(list)
    for run in res.runs:
        es = (res.summary(run, "M_ed", "efficacy"), res.summary(run, "M_ed_ft", "efficacy"))
        ds = (res.downstream_mean(run, "M_ed"), res.downstream_mean(run, "M_ed_ft"))
        if None in es or None in ds:
            continue
        points[(_setting_label(_setting(run)), run.method, run.ft_type, run.layer_selection)].append(
            (100.0 * (ds[0] - ds[1]), 100.0 * (es[0] - es[1])))  # type: ignore[operator]
    return points


def tradeoff(res: Results) -> Figure | Skipped:
    """Edit removal (ES drop) against downstream cost, per fine-tuning type × layer selection."""
    title = "Edit removal vs downstream cost"
    points = tradeoff_points(res)
    if not points:
        return Skipped("tradeoff", title, "no run has efficacy and downstream scores for both M_ed and M_ed_ft")
    plt = _plt()
    panels = sorted({k[:2] for k in points})
    fts = sorted({k[2] for k in points})
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + 1.6, 3.4 * nrows), squeeze=False, sharey=True,
                             layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    for ax, (model, method) in zip(flat, panels, strict=False):
        for (m, meth, ft, layers), vals in sorted(points.items()):
            if (m, meth) != (model, method):
                continue
            x, y = float(np.mean([v[0] for v in vals])), float(np.mean([v[1] for v in vals]))
            ax.scatter([x], [y], marker=FT_MARKERS[fts.index(ft) % len(FT_MARKERS)], s=55,
                       color=LAYER_COLORS.get(layers, "tab:purple"), label=f"{ft}, {layers} layers",
                       edgecolors="black", linewidths=0.4)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel("downstream cost (points)")
        ax.set_title(f"{model} / {method}", fontsize=8)
    for row in axes:
        row[0].set_ylabel("edit removal: ES drop (points)")
    seen: dict[str, Any] = {}
    for ax in flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="outside right center", fontsize=7)
    return Figure("tradeoff", title, "A panel per model, edit data and number of edits, fine-tuning data and "
                  "editing method. Each point: one fine-tuning type and layer selection, mean over seeds. "
                  "y: ES(M_ed) − ES(M_ed_ft); x: downstream score(M_ed) − score(M_ed_ft) (positive = ability lost). "
                  "Colour: layer selection; marker: fine-tuning type.", _png(fig))


# --- survival vs target frequency --------------------------------------------------------------------------

def survival_vs_frequency(res: Results) -> tuple[Figure | Skipped, dict[str, Any]]:
    """Per-edit ES survival (share of runs in which a successful edit survived) vs its target's corpus frequency
    (the store's ``target_frequency``, written by ``editdecay analyze frequency``)."""
    title = "Edit survival vs target frequency in the fine-tuning corpus"
    by_corpus: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in res.runs:
        for case, ok in stats.survived(res.per_record(run, "M_ed"), res.per_record(run, "M_ed_ft"),
                                       "efficacy").items():
            by_corpus[run.ft_data][case].append(float(ok))
    xs: list[float] = []
    ys: list[float] = []
    problems: list[str] = []
    for corpus, cases in sorted(by_corpus.items()):
        targets = {c: res.records[c].target_new for c in cases if c in res.records and res.records[c].target_new}
        if not targets:
            problems.append(f"no target strings stored for the edits fine-tuned on '{corpus}'")
            continue
        counts = res.target_frequency.get(corpus)
        if counts is None:
            status, note = res.analyses.get(("target_frequency", corpus), ("", ""))
            problems.append(note if status == "failed" and note else
                            f"the store holds no target frequencies for the fine-tuning corpus '{corpus}' "
                            f"(`editdecay analyze frequency --store {res.path}` counts them)")
            continue
        missing = 0
        for case, target in targets.items():
            if target not in counts:
                missing += 1
                continue
            xs.append(float(counts[target]))
            ys.append(float(np.mean(cases[case])))
        if missing:
            problems.append(f"{missing} target(s) of '{corpus}' have no stored count")
    if not xs:
        reason = "; ".join(problems) or "no edit succeeded before fine-tuning in any run"
        return Skipped("survival_vs_frequency", title, reason), {}
    rho, p = stats.spearman(xs, ys)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    jitter = np.random.default_rng(0).uniform(-0.02, 0.02, size=len(ys))
    ax.scatter(np.log10(1.0 + np.asarray(xs)), 100.0 * (np.asarray(ys) + jitter), s=14, alpha=0.7)
    ax.set_xlabel("log10(1 + occurrences of the target in the fine-tuning corpus)")
    ax.set_ylabel("ES survival across runs %")
    rho_text = "n/a" if math.isnan(rho) else f"{rho:.2f} (p = {p:.3g})"
    ax.set_title(f"Spearman rho = {rho_text}, {len(xs)} edits", fontsize=9)
    caption = ("Each point is one edit that succeeded before fine-tuning; y: share of its runs in which it still "
               "succeeds after. Frequency: whole-word, case-insensitive occurrences of the target string in the "
               f"fine-tuning corpus. Spearman rho = {rho_text}.")
    if problems:
        caption += " Left out: " + "; ".join(problems) + "."
    return Figure("survival_vs_frequency", title, caption, _png(fig)), {"rho": rho, "p": p, "n": len(xs)}


# --- where fine-tuning changed the weights vs where the edits live -------------------------------------------

def stored_layer_change(res: Results, run: Run) -> tuple[dict[int, float], dict[int, float], list[int]] | None:
    """(fine-tuning change by layer, edit change by layer, edited layers) of a run from the store's
    ``layer_change`` (written by ``editdecay analyze layer-change``); None when the fine-tune has none."""
    ft_stage, edit_stage = res.edited_ft_stage(run), res.edit_stage(run)
    ft_rows = res.layer_change.get(ft_stage.stage_id) if ft_stage else None
    if not ft_rows:
        return None
    edit_rows = res.layer_change.get(edit_stage.stage_id, {}) if edit_stage else {}
    ft_change = {i: row.rel_change for i, row in sorted(ft_rows.items())}
    edit_change = {i: row.rel_change for i, row in sorted(edit_rows.items()) if not math.isnan(row.rel_change)}
    edited = [i for i, row in sorted(edit_rows.items()) if row.edited]
    return ft_change, edit_change, edited or sorted(edit_change)


LayerChange = tuple[dict[int, float], dict[int, float], list[int]]
SELECTION_ORDER = {"all": 0, "edited": 1, "non-edited": 2}


def layer_change_panels(res: Results, max_figures: int = 4) -> tuple[list[tuple[tuple, LayerChange]], list[Run], int]:
    """(the panels to draw: (model, method, ft type, layers) and its stored change; the configurations without
    one; how many have one). The (model, method, ft type) fine-tuned under the most layer selections comes first,
    its selections side by side (all, edited, non-edited): where each selection changed the weights against where
    the edit wrote is what the figure is for."""
    chosen: dict[tuple, LayerChange] = {}
    selection: dict[tuple, str] = {}
    missing: list[Run] = []
    for key, runs in group_runs(res.runs, ("model", "method", "ft_type", "layers")).items():
        for run in runs:
            change = stored_layer_change(res, run)
            if change is not None:
                chosen[key], selection[key] = change, run.layer_selection
                break
        else:
            missing.append(runs[0])
    by_setting: dict[tuple, list[tuple]] = {}
    for key in chosen:  # group_runs' sorted order; ties between settings keep it
        by_setting.setdefault(key[:3], []).append(key)
    settings = sorted(by_setting, key=lambda s: -len(by_setting[s]))
    keys = [k for s in settings for k in sorted(by_setting[s], key=lambda k: SELECTION_ORDER.get(selection[k], 3))]
    return [(k, chosen[k]) for k in keys[:max_figures]], missing, len(chosen)


def layer_change_figures(res: Results, max_figures: int = 4) -> tuple[list[Figure], list[str]]:
    """One panel per (model, method, ft type, layer selection) whose weight change the store holds (at most
    ``max_figures``, chosen by :func:`layer_change_panels`)."""
    notes: list[str] = []
    items, missing, n_chosen = layer_change_panels(res, max_figures)
    if missing:
        failed = []
        for run in missing:
            stage = res.edited_ft_stage(run)
            status, note = res.analyses.get(("layer_change", stage.stage_id if stage else ""), ("", ""))
            if status == "failed" and note:
                failed.append(note)
        why = (f"; {len(failed)} could not be analysed, e.g. {sorted(failed)[0]}" if failed else "")
        notes.append(f"Per-layer weight change: {len(missing)} configuration(s) have none in the store, so they are "
                     f"not shown (`editdecay analyze layer-change --store {res.path}` computes it from the edit and "
                     f"fine-tune artifacts on disk){why}.")
    if not items:
        return [], notes
    if n_chosen > max_figures:
        notes.append(f"Per-layer weight change: showing {max_figures} of {n_chosen} configurations, those of the "
                     "model, method and fine-tuning type with the most layer selections first.")
    plt = _plt()
    fig, axes = plt.subplots(len(items), 1, figsize=(7.5, 2.4 * len(items)), squeeze=False, layout="constrained")
    for ax, (key, (ft_change, edit_change, edited)) in zip(axes[:, 0], items, strict=True):
        layers = sorted(ft_change)
        for layer in edited:
            ax.axvspan(layer - 0.5, layer + 0.5, color="tab:orange", alpha=0.2, lw=0)
        ax.bar(layers, [ft_change[i] for i in layers], color="tab:blue")
        ax.set_ylabel("fine-tuning ‖ΔW‖/‖W‖", color="tab:blue", fontsize=8)
        if edit_change:
            twin = ax.twinx()
            twin.plot(sorted(edit_change), [edit_change[i] for i in sorted(edit_change)], "o", color="tab:red")
            twin.set_ylabel("edit ‖ΔW‖/‖W‖", color="tab:red", fontsize=8)
            twin.set_ylim(bottom=0)
        ax.set_title(" / ".join(map(str, key)) + " (shaded: edited layers)", fontsize=9)
        ax.set_xlabel("layer")
    return [Figure("layer_change", "Where fine-tuning changed the weights vs where the edits live",
                   "Blue bars (left axis): relative weight change ‖W_ft − W_ed‖/‖W_ed‖ per layer, over all of the "
                   "layer's weights, between the fine-tuned model and the edited model it started from. Red dots "
                   "(right axis): the edit's ‖ΔW‖/‖W‖ of the rewritten projection. Shaded: edited layers.",
                   _png(fig))], notes


def all_figures(res: Results) -> tuple[list[Figure | Skipped], list[str], dict[str, Any]]:
    figures: list[Figure | Skipped] = [survival_heatmap(res), trajectories(res),
                                       trajectories(res, "efficacy_magnitude"), tradeoff(res)]
    freq_fig, freq_stats = survival_vs_frequency(res)
    figures.append(freq_fig)
    layer_figs, notes = layer_change_figures(res)
    figures.extend(layer_figs)
    if not layer_figs:
        figures.append(Skipped("layer_change", "Where fine-tuning changed the weights vs where the edits live",
                               "the store holds no per-layer weight change of an edited fine-tune "
                               "(`editdecay analyze layer-change` computes it from the artifacts on disk)"))
    return figures, notes, {"frequency": freq_stats}
