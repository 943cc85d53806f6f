"""The report's figures (matplotlib, Agg backend, PNG bytes), each with a caption and the note when skipped.

A figure whose inputs are missing (no trajectories, no artifacts on disk, no fine-tuning corpus) is skipped with
a note in the report: a report never fails because an optional input is absent.

Frequency of a target in the fine-tuning corpus: whole-word, case-insensitive occurrences of the target's word
sequence (``\\w+`` words) in the corpus text (prompts and responses). Words are used instead of the model's
tokens so that one count serves every model of a grid and matches what a reader would search for.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from editdecay import stats
from editdecay.errors import EditDecayError
from editdecay.report.load import Results, Run, Stage
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


def _full_layer_runs(res: Results) -> list[Run]:
    return [r for r in res.runs if r.layer_selection == "all"] or list(res.runs)


def survival_heatmap(res: Results) -> Figure | Skipped:
    """Mean ES survival (1 − EFR) per method × fine-tuning type, one panel per model."""
    title = "Edit survival by method and fine-tuning type"
    runs = _full_layer_runs(res)
    cells: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for run in runs:
        d = run_decay(res, run, "efficacy")
        if d is not None and not math.isnan(d.survival):
            cells[(run.model, run.method, run.ft_type)].append(d.survival)
    if not cells:
        return Skipped("survival_heatmap", title, "no run has per-edit results for both M_ed and M_ed_ft")
    plt = _plt()
    models = sorted({k[0] for k in cells})
    methods = sorted({k[1] for k in cells})
    fts = sorted({k[2] for k in cells})
    fig, axes = plt.subplots(1, len(models), figsize=(2.2 + 1.5 * len(fts) * len(models), 1.2 + 0.6 * len(methods)),
                             squeeze=False, sharey=True, layout="constrained")
    for ax, model in zip(axes[0], models, strict=True):
        grid = np.full((len(methods), len(fts)), np.nan)
        for i, method in enumerate(methods):
            for j, ft in enumerate(fts):
                vals = cells.get((model, method, ft))
                if vals:
                    grid[i, j] = 100.0 * float(np.mean(vals))
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for i in range(len(methods)):
            for j in range(len(fts)):
                text = "–" if np.isnan(grid[i, j]) else f"{grid[i, j]:.0f}%"
                ax.text(j, i, text, ha="center", va="center", color="white" if grid[i, j] < 60 else "black")
        ax.set_xticks(range(len(fts)), fts)
        ax.set_yticks(range(len(methods)), methods)
        ax.set_title(model, fontsize=10)
    fig.colorbar(im, ax=axes[0].tolist(), label="ES survival %")
    return Figure("survival_heatmap", title,
                  "Share of successful edits that still succeed after fine-tuning (1 − EFR, efficacy), mean over "
                  "seeds and settings; full-layer fine-tuning runs.", _png(fig))


LAYER_COLORS = {"all": "tab:blue", "edited": "tab:red", "non-edited": "tab:green"}
METHOD_STYLES = ("-", "--", ":", "-.")


def trajectories(res: Results, metric: str = "efficacy") -> Figure | Skipped:
    """Efficacy over fine-tuning steps: a panel per model × ft type, a line per method × layer selection."""
    title = "Decay over fine-tuning steps"
    lines: dict[tuple[str, str, str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in res.runs:
        stage = res.edited_ft_stage(run)
        points = res.trajectories.get(stage.stage_id, []) if stage else []
        for p in points:
            if metric in p and not math.isnan(p[metric]):
                key = (run.model, run.ft_type, run.method, run.layer_selection)
                lines[key][int(p["step"])].append(p[metric])
    if not lines:
        return Skipped("trajectories", title, "no fine-tuning stage of an edited model recorded a trajectory")
    plt = _plt()
    models = sorted({k[0] for k in lines})
    fts = sorted({k[1] for k in lines})
    methods = sorted({k[2] for k in lines})
    fig, axes = plt.subplots(len(models), len(fts), figsize=(3.6 * len(fts) + 1.5, 2.8 * len(models)), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    for (model, ft, method, layers), steps in sorted(lines.items()):
        ax = axes[models.index(model)][fts.index(ft)]
        xs = sorted(steps)
        ax.plot(xs, [100.0 * float(np.mean(steps[s])) for s in xs], marker="o", ms=3,
                color=LAYER_COLORS.get(layers, "tab:purple"), ls=METHOD_STYLES[methods.index(method) % 4],
                label=f"{method}, {layers} layers")
    for i, model in enumerate(models):
        for j, ft in enumerate(fts):
            ax = axes[i][j]
            ax.set_title(f"{model} / {ft}", fontsize=9)
            ax.set_ylim(-2, 102)
            if i == len(models) - 1:
                ax.set_xlabel("fine-tuning step")
            if j == 0:
                ax.set_ylabel(f"{metric} %")
    seen: dict[str, Any] = {}
    for row in axes:
        for ax in row:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="outside right center", fontsize=7)
    return Figure("trajectories", title, f"{metric.capitalize()} of the tracked edits during fine-tuning, mean over "
                  "seeds; colour: layer selection, line style: editing method.", _png(fig))


FT_MARKERS = ("o", "s", "^", "D", "v", "P")


def tradeoff(res: Results) -> Figure | Skipped:
    """Edit removal (ES drop) against downstream cost, per fine-tuning type × layer selection."""
    title = "Edit removal vs downstream cost"
    points: dict[tuple[str, str, str, str], list[tuple[float, float]]] = defaultdict(list)
    for run in res.runs:
        es = (res.summary(run, "M_ed", "efficacy"), res.summary(run, "M_ed_ft", "efficacy"))
        ds = (res.downstream_mean(run, "M_ed"), res.downstream_mean(run, "M_ed_ft"))
        if None in es or None in ds:
            continue
        points[(run.model, run.method, run.ft_type, run.layer_selection)].append(
            (100.0 * (ds[0] - ds[1]), 100.0 * (es[0] - es[1])))  # type: ignore[operator]
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
        ax.set_title(f"{model} / {method}", fontsize=9)
    for row in axes:
        row[0].set_ylabel("edit removal: ES drop (points)")
    seen: dict[str, Any] = {}
    for ax in flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="outside right center", fontsize=7)
    return Figure("tradeoff", title, "Each point: one fine-tuning type and layer selection, mean over seeds. "
                  "y: ES(M_ed) − ES(M_ed_ft); x: downstream score(M_ed) − score(M_ed_ft) (positive = ability lost). "
                  "Colour: layer selection; marker: fine-tuning type.", _png(fig))


# --- survival vs target frequency --------------------------------------------------------------------------

def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def phrase_counts(corpus_texts: Iterable[str], phrases: Iterable[str]) -> dict[str, int]:
    """Whole-word, case-insensitive occurrence count of each phrase (a word sequence) in the texts."""
    wanted = {p: tuple(_words(p)) for p in set(phrases)}
    lengths = {len(w) for w in wanted.values() if w}
    counters: dict[int, Counter] = {n: Counter() for n in lengths}
    for text in corpus_texts:
        words = _words(text)
        for n in lengths:
            counters[n].update(zip(*(words[i:] for i in range(n)), strict=False))
    return {p: (counters[len(w)][w] if w else 0) for p, w in wanted.items()}


CorpusLoader = Callable[[str], list[str]]


def default_corpus_loader(name: str) -> list[str]:
    """Texts of a fine-tuning corpus (prompt and response of each example)."""
    from editdecay.data.corpora import load_finetune_corpus

    return [f"{ex.prompt}\n{ex.response}" for ex in load_finetune_corpus(name)]


def survival_vs_frequency(res: Results, corpus_loader: CorpusLoader = default_corpus_loader) -> tuple[
        Figure | Skipped, dict[str, Any]]:
    """Per-edit ES survival (share of runs in which a successful edit survived) vs its target's corpus frequency."""
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
        try:
            texts = corpus_loader(corpus)
        except EditDecayError as exc:
            problems.append(f"fine-tuning corpus '{corpus}' could not be loaded ({exc})")
            continue
        counts = phrase_counts(texts, targets.values())
        for case, target in targets.items():
            xs.append(float(counts[target]))
            ys.append(float(np.mean(cases[case])))
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

def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.safetensors") if p.name != "deltas.safetensors")


def _layer_index(key: str, prefix: str) -> int | None:
    match = re.match(re.escape(prefix) + r"\.(\d+)\.", key)
    return int(match.group(1)) if match else None


def layer_change(input_folder: Path, ft_folder: Path) -> tuple[dict[int, float], dict[int, float], list[int]]:
    """Per layer ‖W_ft − W_in‖ / ‖W_in‖ over all of the layer's weights; per edited layer ‖ΔW‖ / ‖W_base‖.

    Returns (fine-tuning change by layer, edit change by layer, edited layers from the edit manifest).
    """
    from safetensors import safe_open

    from editdecay.models.arch import get_adapter

    config = json.loads((ft_folder / "config.json").read_text(encoding="utf-8"))
    prefix = get_adapter(str(config.get("model_type", ""))).layers
    diff_sq: dict[int, float] = defaultdict(float)
    base_sq: dict[int, float] = defaultdict(float)
    edit_change: dict[int, float] = {}
    with ExitStack() as stack:
        inputs = {}
        for file in _weight_files(input_folder):
            handle = stack.enter_context(safe_open(str(file), framework="pt"))
            inputs.update({key: handle for key in handle.keys()})  # noqa: SIM118 (no __iter__)
        for file in _weight_files(ft_folder):
            with safe_open(str(file), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118
                    layer = _layer_index(key, prefix)
                    if layer is None or key not in inputs:
                        continue
                    w_in = inputs[key].get_tensor(key).float()
                    w_ft = fh.get_tensor(key).float()
                    diff_sq[layer] += float((w_ft - w_in).pow(2).sum())
                    base_sq[layer] += float(w_in.pow(2).sum())
        deltas = input_folder / "deltas.safetensors"
        if deltas.exists():
            with safe_open(str(deltas), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118
                    layer = _layer_index(key, prefix)
                    if layer is None or key not in inputs:
                        continue
                    delta = fh.get_tensor(key).float()
                    w_base = inputs[key].get_tensor(key).float() - delta
                    base_norm = float(w_base.norm())
                    edit_change[layer] = float(delta.norm()) / base_norm if base_norm else math.nan
    ft_change = {i: math.sqrt(diff_sq[i] / base_sq[i]) if base_sq[i] else math.nan for i in sorted(base_sq)}
    edited_layers: list[int] = []
    manifest = input_folder / "manifest.json"
    if manifest.exists():
        edited_layers = [int(x) for x in json.loads(manifest.read_text(encoding="utf-8")).get("layers", [])]
    return ft_change, edit_change, edited_layers or sorted(edit_change)


def _artifact(stage: Stage | None, store_path: str) -> Path | None:
    """The stage's artifact folder when it holds a model; a relative path is tried from the working directory
    and from the store's folder (runners record paths relative to where they ran)."""
    if stage is None or not stage.artifact:
        return None
    path = Path(stage.artifact)
    candidates = [path] if path.is_absolute() else [path, Path(store_path).resolve().parent / path]
    for candidate in candidates:
        if (candidate / "config.json").exists() and _weight_files(candidate):
            return candidate
    return None


def layer_change_figures(res: Results, max_figures: int = 4) -> tuple[list[Figure], list[str]]:
    """One panel per (model, method, ft type, layer selection) whose edit and fine-tune folders are on disk."""
    notes: list[str] = []
    chosen: dict[tuple[str, str, str, str], tuple[Path, Path]] = {}
    missing = 0
    for key, runs in group_runs(res.runs, ("model", "method", "ft_type", "layers")).items():
        for run in runs:
            edit_dir = _artifact(res.edit_stage(run), res.path)
            ft_dir = _artifact(res.edited_ft_stage(run), res.path)
            if edit_dir and ft_dir:
                chosen[key] = (edit_dir, ft_dir)
                break
        else:
            missing += 1
    if missing:
        notes.append(f"Per-layer weight change: the edit or fine-tune artifacts of {missing} configuration(s) are "
                     "not on disk (or not recorded in the store), so they are not shown.")
    if not chosen:
        return [], notes
    if len(chosen) > max_figures:
        notes.append(f"Per-layer weight change: showing the first {max_figures} of {len(chosen)} configurations.")
    plt = _plt()
    items = list(chosen.items())[:max_figures]
    fig, axes = plt.subplots(len(items), 1, figsize=(7.5, 2.4 * len(items)), squeeze=False, layout="constrained")
    from tqdm.auto import tqdm

    for ax, (key, (edit_dir, ft_dir)) in tqdm(list(zip(axes[:, 0], items, strict=True)), desc="per-layer weight change",
                                              disable=None, leave=False):
        try:
            ft_change, edit_change, edited = layer_change(edit_dir, ft_dir)
        except (OSError, ValueError, EditDecayError) as exc:
            notes.append(f"Per-layer weight change for {'/'.join(map(str, key))}: cannot read artifacts ({exc}).")
            ax.set_visible(False)
            continue
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


def all_figures(res: Results, corpus_loader: CorpusLoader = default_corpus_loader) -> tuple[
        list[Figure | Skipped], list[str], dict[str, Any]]:
    figures: list[Figure | Skipped] = [survival_heatmap(res), trajectories(res), tradeoff(res)]
    freq_fig, freq_stats = survival_vs_frequency(res, corpus_loader)
    figures.append(freq_fig)
    layer_figs, notes = layer_change_figures(res)
    figures.extend(layer_figs)
    if not layer_figs:
        figures.append(Skipped("layer_change", "Where fine-tuning changed the weights vs where the edits live",
                               "no run has both its edit and fine-tune artifact folders on disk"))
    return figures, notes, {"frequency": freq_stats}
