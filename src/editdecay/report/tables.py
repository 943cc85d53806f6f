"""The study's tables, computed from a :class:`Results` snapshot; values stay raw, formatting is render's job.

Every table aggregates over seeds only: a row is one configuration (model, method, edit data, number of edits,
fine-tuning type, layer selection, modules, fine-tuning data) and shows the mean over its seeds. Edit metrics
are fractions in [0, 1] as the store holds them (rendered as %); relative decreases are already in %.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from editdecay import stats
from editdecay.report.load import RUN_KEY, Results, Run

EDIT_METRICS = ("efficacy", "paraphrase", "neighborhood")
SHORT = {"efficacy": "ES", "paraphrase": "PS", "neighborhood": "NS"}
DECAY_METRICS = ("efficacy", "paraphrase")  # the study's EFR metrics (NS is not an edit that can flip)
KEY_LABELS = {"model": "model", "method": "method", "edit_data": "data", "n_edits": "#edits",
              "ft_type": "ft type", "layers": "layers", "modules": "modules", "ft_data": "ft data",
              "preserve": "preserve"}
SUCCESS_RULE = f"value > {stats.SUCCESS_THRESHOLD}"  # when a record's edit succeeds, as every caption says it


@dataclass(frozen=True)
class Column:
    """``kind``: str | int | pct (fraction shown as %) | num (shown with 1 decimal) | p (p-value) | float."""

    key: str
    label: str
    kind: str = "str"


@dataclass
class Table:
    name: str  # file stem for CSV/LaTeX
    title: str
    caption: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    display_limit: int | None = None  # HTML/Markdown/text show at most this many rows; CSV/LaTeX keep all
    collapse_constant: bool = True  # HTML/Markdown/text fold configuration columns with one value into the caption
    text_records: bool = False  # text output: one block per row (for tables of sentences), not truncated columns

    def display_columns(self) -> tuple[list[Column], list[tuple[str, Any]]]:
        """Columns to show, and the configuration columns left out because every row has the same value."""
        if not self.collapse_constant or len(self.rows) < 2:
            return self.columns, []
        shown, constant = [], []
        for c in self.columns:
            values = {str(r.get(c.key)) for r in self.rows}
            if c.key in KEY_LABELS and len(values) == 1:
                constant.append((c.label, self.rows[0].get(c.key)))
            else:
                shown.append(c)
        return shown, constant

    def shown(self) -> tuple[list[dict[str, Any]], str | None]:
        """Rows to display and, when some are cut, the sentence that says so."""
        if self.display_limit is None or len(self.rows) <= self.display_limit:
            return self.rows, None
        return self.rows[: self.display_limit], (f"First {self.display_limit} of {len(self.rows)} rows shown; "
                                                 f"all rows are in tables/{self.name}.csv.")

    def column(self, key: str) -> list[Any]:
        return [row.get(key) for row in self.rows]


def mean_present(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are there (None and NaN left out); None when none is."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def _sd(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.std(vals, ddof=1)) if len(vals) >= 2 else None


def _key_columns(keys: Iterable[str]) -> list[Column]:
    return [Column(k, KEY_LABELS[k], "int" if k == "n_edits" else "str") for k in keys]


def group_runs(runs: Iterable[Run], keys: tuple[str, ...] = RUN_KEY) -> dict[tuple, list[Run]]:
    """Runs grouped by the given configuration factors, in sorted key order."""
    out: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        out[tuple(getattr(run, k) for k in keys)].append(run)
    return {k: sorted(out[k], key=lambda r: r.seed) for k in sorted(out, key=lambda t: tuple(str(x) for x in t))}


def _configuration_columns(*extra: Column) -> list[Column]:
    """The leading columns of a table with one row per configuration: its key, the number of seeds, ``extra``."""
    return _key_columns(RUN_KEY) + [Column("seeds", "seeds", "int"), *extra]


def _configurations(res: Results) -> Iterator[tuple[dict[str, Any], list[Run]]]:
    """Each configuration as (its key values, the start of its row; its runs, one per seed), in sorted key order."""
    for key, runs in group_runs(res.runs).items():
        yield dict(zip(RUN_KEY, key, strict=True)), runs


def edit_metrics_table(res: Results) -> Table:
    cols = _configuration_columns()
    for metric in EDIT_METRICS:
        cols += [Column(f"{metric}_M_ed", f"{SHORT[metric]} M_ed", "pct"),
                 Column(f"{metric}_M_ed_ft", f"{SHORT[metric]} M_ed_ft", "pct")]
    cols += [Column("score_M_ed", "Score M_ed", "pct"), Column("score_M_ed_ft", "Score M_ed_ft", "pct")]
    table = Table("edit_metrics", "Edit metrics before and after fine-tuning",
                  "Efficacy (ES), paraphrase (PS) and neighbourhood (NS) success of the edited model (M_ed) and of "
                  "the edited-then-fine-tuned model (M_ed_ft), and MEMIT's composite Score (their harmonic mean, "
                  "per run), mean over seeds, in %.", cols)
    for row, runs in _configurations(res):
        row["seeds"] = len(runs)
        for metric in EDIT_METRICS:
            for grp in ("M_ed", "M_ed_ft"):
                row[f"{metric}_{grp}"] = mean_present(res.summary(r, grp, metric) for r in runs)
        for grp in ("M_ed", "M_ed_ft"):
            row[f"score_{grp}"] = mean_present(stats.harmonic_mean([res.summary(r, grp, m) for m in EDIT_METRICS])
                                        for r in runs)
        table.rows.append(row)
    return table


def categories_table(res: Results) -> Table:
    """The study's edit categories per configuration: stable, erased, emergent, impossible (on efficacy)."""
    cols = _configuration_columns(Column("n", "edits", "int"))
    cols += [Column(c, c, "pct") for c in stats.CATEGORIES]
    table = Table("categories", "Edit categories",
                  f"Per record, matched by case_id, efficacy success ({SUCCESS_RULE}) of M_ed and M_ed_ft: stable "
                  "(holds before and after), erased (held, then not), emergent (did not hold, then did), impossible "
                  "(held neither time); share of the edits, mean over seeds, in %.", cols)
    for row, runs in _configurations(res):
        shares: dict[str, list[float]] = defaultdict(list)
        sizes = []
        for run in runs:
            before, after = res.per_record(run, "M_ed"), res.per_record(run, "M_ed_ft")
            if not before or not after:
                continue
            cats = list(stats.categorize(before, after, "efficacy").values())
            if not cats:
                continue
            sizes.append(len(cats))
            for c in stats.CATEGORIES:
                shares[c].append(cats.count(c) / len(cats))
        if not sizes:
            continue
        row.update(seeds=len(sizes), n=round(mean_present(sizes)))
        row.update({c: mean_present(shares[c]) for c in stats.CATEGORIES})
        table.rows.append(row)
    return table


def _relative_decreases(res: Results, run: Run) -> dict[str, float]:
    return {m: stats.relative_decrease(res.summary(run, "M_ed", m), res.summary(run, "M_ed_ft", m))
            for m in EDIT_METRICS}


def relative_decrease_table(res: Results, by: str) -> Table:
    """Relative decrease (before - after) / before in %, per run, then mean ± sd over the runs of each group.

    Only full-layer fine-tuning runs enter (the layer-selection study has its own table) unless a store holds
    no such run.
    """
    runs = [r for r in res.runs if r.layer_selection == "all"] or list(res.runs)
    cols = [Column(by, KEY_LABELS[by]), Column("runs", "runs", "int")]
    for metric in EDIT_METRICS:
        cols += [Column(f"rd_{metric}", f"{SHORT[metric]} decrease %", "num"),
                 Column(f"rd_{metric}_sd", "± sd", "num")]
    scope = "full-layer fine-tuning runs" if any(r.layer_selection == "all" for r in res.runs) else "all runs"
    table = Table(f"relative_decrease_by_{by}", f"Relative decrease by {KEY_LABELS[by]}",
                  f"(ES/PS/NS of M_ed − M_ed_ft) / M_ed in %, per run, mean ± sd over {scope} of each {KEY_LABELS[by]}.",
                  cols)
    for key, group in group_runs(runs, (by,)).items():
        per_run = [_relative_decreases(res, r) for r in group]
        row: dict[str, Any] = {by: key[0], "runs": len(group)}
        for metric in EDIT_METRICS:
            row[f"rd_{metric}"] = mean_present(d[metric] for d in per_run)
            row[f"rd_{metric}_sd"] = _sd(d[metric] for d in per_run)
        table.rows.append(row)
    return table


@dataclass(frozen=True)
class Decay:
    """One run's decay of one metric between M_ed and M_ed_ft (from :func:`editdecay.stats.decay`)."""

    metric: str
    n_success_before: int
    efr: float
    emergent: float
    survival: float
    survived: tuple[float, ...] = ()  # 0/1 per edit that succeeded before, by case_id: pooled for the CIs


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def run_decay(res: Results, run: Run, metric: str) -> Decay | None:
    """EFR, emergent edits and survival of one run, matched by case_id (the two evaluations must hold the same
    records); None when a group has no per-record data."""
    before, after = res.per_record(run, "M_ed"), res.per_record(run, "M_ed_ft")
    if not before or not after:
        return None
    rows_b = [{"case_id": c, **m} for c, m in before.items() if metric in m]
    rows_a = [{"case_id": c, **m} for c, m in after.items() if metric in m]
    if not rows_b or not rows_a:
        return None
    where = f"{res.path}: run '{run.run_id}'"
    ids, b, a = stats.match_records(rows_b, rows_a, f"{where} M_ed", f"{where} M_ed_ft")
    ids = sorted(ids)
    d = stats.decay([b[c][metric] for c in ids], [a[c][metric] for c in ids], stats.SUCCESS_THRESHOLD)
    return Decay(metric, d.succeeded_before, _nan(d.efr), _nan(d.emergent), _nan(d.survival),
                 tuple(float(v) for v in d.survived))


def efr_table(res: Results, seed: int = 0) -> Table:
    """Edit Flip Ratio and emergent edits per configuration, with a bootstrap CI of the ES survival rate."""
    cols = _configuration_columns(Column("n_ok", "ES ok before", "int"))
    for metric in DECAY_METRICS:
        cols += [Column(f"efr_{metric}", f"EFR {SHORT[metric]}", "pct"),
                 Column(f"emergent_{metric}", f"emergent {SHORT[metric]}", "pct")]
    cols += [Column("survival", "ES survival", "pct"), Column("survival_lo", "95% CI lo", "pct"),
             Column("survival_hi", "95% CI hi", "pct")]
    table = Table("efr", "Edit Flip Ratio and emergent edits",
                  "Per record, matched by case_id between M_ed and M_ed_ft; a record succeeds when its "
                  f"{SUCCESS_RULE}. EFR: of the edits that succeeded before, the share failing after; emergent: of "
                  "those that failed before, the share succeeding after (mean over seeds). Survival CI: seeded "
                  "percentile bootstrap over the pooled per-edit survival indicators.", cols)
    for row, runs in _configurations(res):
        row["seeds"] = len(runs)
        decays = {m: [d for r in runs if (d := run_decay(res, r, m)) is not None] for m in DECAY_METRICS}
        if not decays["efficacy"]:
            continue
        row["n_ok"] = sum(d.n_success_before for d in decays["efficacy"])
        for metric in DECAY_METRICS:
            row[f"efr_{metric}"] = mean_present(d.efr for d in decays[metric])
            row[f"emergent_{metric}"] = mean_present(d.emergent for d in decays[metric])
        indicators = [s for d in decays["efficacy"] for s in d.survived]
        row["survival"] = mean_present(indicators)
        lo, hi = stats.bootstrap_ci(indicators, seed=seed) if indicators else (None, None)
        row["survival_lo"], row["survival_hi"] = lo, hi
        table.rows.append(row)
    return table


SELECTIVE_KEY = ("model", "method", "edit_data", "n_edits", "ft_type", "modules", "ft_data", "preserve")
LAYER_CONDITIONS = (("all", "fine-tuned, all layers"), ("edited", "fine-tuned, edited layers only"),
                    ("non-edited", "fine-tuned, non-edited layers only"))


def selective_layer_table(res: Results) -> Table:
    """Base / edited / fine-tuned with each layer selection: efficacy and downstream score side by side."""
    cols = _key_columns(SELECTIVE_KEY) + [Column("condition", "model state"), Column("seeds", "seeds", "int"),
                                          Column("efficacy", "ES", "pct"), Column("paraphrase", "PS", "pct"),
                                          Column("downstream", "downstream", "pct")]
    table = Table("selective_layers", "Selective-layer fine-tuning",
                  "Efficacy/paraphrase on the edit records and the mean downstream accuracy of the base model (M), "
                  "the edited model (M_ed) and the edited model fine-tuned on all, only the edited, or only the "
                  "non-edited layers (M_ed_ft); mean over seeds. Shown for configurations with a layer selection "
                  "other than all layers.", cols)
    for key, runs in group_runs(res.runs, SELECTIVE_KEY).items():
        selections = {r.layer_selection for r in runs}
        if not selections - {"all"}:
            continue
        base: dict[str, Any] = dict(zip(SELECTIVE_KEY, key, strict=True))

        def add(condition: str, group: list[Run], grp: str, base: dict[str, Any] = base) -> None:
            row = dict(base, condition=condition, seeds=len({r.seed for r in group}))
            for metric in ("efficacy", "paraphrase"):
                row[metric] = mean_present(res.summary(r, grp, metric) for r in group)
            row["downstream"] = mean_present(res.downstream_mean(r, grp) for r in group)
            table.rows.append(row)

        add("base (M)", runs, "M")
        add("edited (M_ed)", runs, "M_ed")
        for selection, label in LAYER_CONDITIONS:
            chosen = [r for r in runs if r.layer_selection == selection]
            if chosen:
                add(label, chosen, "M_ed_ft")
        for selection in sorted(selections - {s for s, _ in LAYER_CONDITIONS}):
            add(f"fine-tuned, layers {selection}", [r for r in runs if r.layer_selection == selection], "M_ed_ft")
    return table


def downstream_table(res: Results) -> Table:
    cols = _configuration_columns(*[Column(f"ds_{g}", f"downstream {g}", "pct") for g in ("M", "M_ft", "M_ed", "M_ed_ft")])
    table = Table("downstream", "Downstream score of the four model groups",
                  "Mean accuracy over the downstream tasks of the base (M), fine-tuned (M_ft), edited (M_ed) and "
                  "edited-then-fine-tuned (M_ed_ft) models, mean over seeds.", cols)
    for row, runs in _configurations(res):
        row["seeds"] = len(runs)
        for grp in ("M", "M_ft", "M_ed", "M_ed_ft"):
            row[f"ds_{grp}"] = mean_present(res.downstream_mean(r, grp) for r in runs)
        if any(row[f"ds_{g}"] is not None for g in ("M", "M_ft", "M_ed", "M_ed_ft")):
            table.rows.append(row)
    return table


def decay_tests_table(res: Results, min_seeds: int = 3) -> Table:
    """Per configuration: does efficacy drop from M_ed to M_ed_ft?

    With at least ``min_seeds`` seeds: paired t-test and Wilcoxon over the seeds' efficacies (Cohen's dz). With
    fewer: McNemar's exact test per edit on pooled (success before, success after) pairs.
    """
    cols = _key_columns(RUN_KEY) + [Column("test", "test"), Column("n", "n", "int"),
                                    Column("statistic", "statistic", "float"), Column("p", "p", "p"),
                                    Column("effect", "effect", "float"), Column("effect_name", "effect size")]
    table = Table("decay_tests", "Does fine-tuning lower efficacy? Paired tests per configuration",
                  f"With ≥ {min_seeds} seeds: paired t-test and Wilcoxon signed-rank of ES(M_ed) vs ES(M_ed_ft) "
                  "across seeds with Cohen's dz / rank-biserial r; otherwise McNemar's exact test per edit "
                  "(effect: drop in success rate).", cols)
    for base, runs in _configurations(res):
        for result in efficacy_drop_tests(res, runs, min_seeds):
            table.rows.append(dict(base, test=result.test, n=result.n, statistic=result.statistic, p=result.pvalue,
                                   effect=result.effect, effect_name=result.effect_name))
    return table


def efficacy_drop_tests(res: Results, runs: list[Run], min_pairs: int = 3) -> list[stats.TestResult]:
    """Tests of ES(M_ed) > ES(M_ed_ft) over these runs (see :func:`decay_tests_table`)."""
    pairs = [(res.summary(r, "M_ed", "efficacy"), res.summary(r, "M_ed_ft", "efficacy")) for r in runs]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if len(pairs) >= min_pairs:
        a, b = [p[0] for p in pairs], [p[1] for p in pairs]
        return [stats.paired_ttest(a, b), stats.wilcoxon_signed_rank(a, b)]
    before: list[bool] = []
    after: list[bool] = []
    for run in runs:
        ids, x, y = stats.matched(res.per_record(run, "M_ed"), res.per_record(run, "M_ed_ft"), "efficacy")
        before += [bool(v > stats.SUCCESS_THRESHOLD) for v in x]
        after += [bool(v > stats.SUCCESS_THRESHOLD) for v in y]
    return [stats.mcnemar_exact(before, after)] if before else []


def edits_table(res: Results) -> Table:
    """One row per edit: the fact, its success before/after fine-tuning (mean over runs) and survival share."""
    cols = [Column("case_id", "case"), Column("edit_data", "data"), Column("subject", "subject"),
            Column("prompt", "prompt"), Column("target_true", "true target"), Column("target_new", "new target"),
            Column("runs", "runs", "int"), Column("es_M_ed", "ES M_ed", "pct"), Column("es_M_ed_ft", "ES M_ed_ft", "pct"),
            Column("survival", "survival", "pct")]
    table = Table("edits", "Per edit", "Each edited fact with its efficacy before and after fine-tuning (mean over "
                  "the runs that edited it) and the share of runs in which it survived (among runs where it "
                  "succeeded before); sorted from least to most durable.", cols, display_limit=100)
    before: dict[str, list[float]] = defaultdict(list)
    after: dict[str, list[float]] = defaultdict(list)
    surv: dict[str, list[float]] = defaultdict(list)
    for run in res.runs:
        b, a = res.per_record(run, "M_ed"), res.per_record(run, "M_ed_ft")
        for case, values in b.items():
            if "efficacy" in values:
                before[case].append(values["efficacy"])
        for case, values in a.items():
            if "efficacy" in values:
                after[case].append(values["efficacy"])
        if b and a:
            for case, ok in stats.survived(b, a, "efficacy").items():
                surv[case].append(float(ok))
    for case in sorted(set(before) | set(after)):
        info = res.records.get(case)
        table.rows.append({"case_id": case, "edit_data": info.edit_data if info else None,
                           "subject": info.subject if info else None, "prompt": info.prompt if info else None,
                           "target_true": info.target_true if info else None,
                           "target_new": info.target_new if info else None, "runs": len(before[case]),
                           "es_M_ed": mean_present(before[case]), "es_M_ed_ft": mean_present(after[case]),
                           "survival": mean_present(surv[case])})
    table.rows.sort(key=lambda r: (r["survival"] if r["survival"] is not None else 2.0, r["case_id"]))
    return table


def preserve_of(res: Results, run: Run) -> str:
    """The run's edit-preserving strategy: its M_ed_ft fine-tuning stage's ``finetune.preserve_strategy``."""
    stage = res.edited_ft_stage(run)
    cfg = stage.config.get("finetune", stage.config) if stage is not None else {}
    return str(cfg.get("preserve_strategy") or "none") if isinstance(cfg, dict) else "none"


def preserve_table(res: Results, seed: int = 0) -> Table:
    """Each preserve strategy against plain fine-tuning (``none``) of the same configuration."""
    key_names = tuple(k for k in RUN_KEY if k != "preserve")  # strategies are compared within one configuration
    cols = _key_columns(key_names) + [Column("preserve", "strategy"), Column("seeds", "seeds", "int"),
                                    Column("n_ok", "ES ok before", "int"), Column("es_before", "ES M_ed", "pct"),
                                    Column("es_after", "ES M_ed_ft", "pct"), Column("efr", "EFR ES", "pct"),
                                    Column("survival", "ES survival", "pct"), Column("survival_lo", "95% CI lo", "pct"),
                                    Column("mag_after", "ES magnitude M_ed_ft", "num"),
                                    Column("mag_delta", "Δ ES magnitude (pts)", "num"),
                                    Column("downstream", "downstream", "pct"),
                                    Column("downstream_delta", "Δ downstream vs none (pts)", "num"),
                                    Column("ft_seconds", "fine-tune s", "num"),
                                    Column("compute_ratio", "compute × none", "num")]
    table = Table("preserve", "Edit-preserving fine-tuning", "Per configuration, each strategy that keeps edits "
                  "through fine-tuning (freeze, nullspace, replay, reedit; docs/preserve.md) beside plain "
                  "fine-tuning (none): efficacy before/after, Edit Flip Ratio and survival of the edits that held "
                  f"({SUCCESS_RULE}; bootstrap CI over pooled edits), the mean per-edit ES magnitude "
                  "P(new) − P(true) after fine-tuning and its change from M_ed in points (where strategies differ "
                  "when no edit flips), the M_ed_ft downstream score and its difference from plain fine-tuning in "
                  "points, and compute: the M_ed_ft fine-tuning stage's wall seconds (everything the strategy "
                  "adds: keys, projections, replay examples, the re-edit) and their ratio to plain fine-tuning's — "
                  "wall time, so compare them only between stages that ran under the same load; mean over seeds.",
                  cols)
    grouped: dict[tuple, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in res.runs:
        grouped[run.key(drop=("preserve",))][preserve_of(res, run)].append(run)
    if all(set(by) <= {"none"} for by in grouped.values()):
        return table
    order = {"none": 0, "freeze": 1, "nullspace": 2, "replay": 3, "reedit": 4}
    for key in sorted(grouped, key=lambda t: tuple(str(x) for x in t)):
        by = grouped[key]
        plain = mean_present(res.downstream_mean(r, "M_ed_ft") for r in by.get("none", []))
        plain_seconds = mean_present(_ft_seconds(res, r) for r in by.get("none", []))
        for strategy in sorted(by, key=lambda s: (order.get(s, 9), s)):
            runs = sorted(by[strategy], key=lambda r: r.seed)
            decays = [d for r in runs if (d := run_decay(res, r, "efficacy")) is not None]
            indicators = [s for d in decays for s in d.survived]
            down = mean_present(res.downstream_mean(r, "M_ed_ft") for r in runs)
            row: dict[str, Any] = dict(zip(key_names, key, strict=True), preserve=strategy, seeds=len(runs))
            row["n_ok"] = sum(d.n_success_before for d in decays) if decays else None
            row["es_before"] = mean_present(res.summary(r, "M_ed", "efficacy") for r in runs)
            row["es_after"] = mean_present(res.summary(r, "M_ed_ft", "efficacy") for r in runs)
            row["efr"] = mean_present(d.efr for d in decays)
            row["survival"] = mean_present(indicators)
            row["survival_lo"] = stats.bootstrap_ci(indicators, seed=seed)[0] if indicators else None
            row["mag_after"] = mean_present(res.summary(r, "M_ed_ft", "efficacy_magnitude") for r in runs)
            mag_before = mean_present(res.summary(r, "M_ed", "efficacy_magnitude") for r in runs)
            row["mag_delta"] = None if row["mag_after"] is None or mag_before is None else \
                100.0 * (row["mag_after"] - mag_before)
            row["downstream"] = down
            row["downstream_delta"] = None if down is None or plain is None else 100.0 * (down - plain)
            row["ft_seconds"] = mean_present(_ft_seconds(res, r) for r in runs)
            row["compute_ratio"] = None if row["ft_seconds"] is None or not plain_seconds else \
                row["ft_seconds"] / plain_seconds
            table.rows.append(row)
    return table


def _ft_seconds(res: Results, run: Run) -> float | None:
    """Compute time of the finished fine-tune that made the run's M_ed_ft (None when it is not done or untimed)."""
    stage = res.edited_ft_stage(run)
    return stage.seconds if stage is not None and stage.status == "done" else None


def all_tables(res: Results, findings_table: Table | None = None, seed: int = 0) -> list[Table]:
    tables = [edit_metrics_table(res), relative_decrease_table(res, "ft_type"), relative_decrease_table(res, "model"),
              efr_table(res, seed=seed), categories_table(res), selective_layer_table(res), downstream_table(res),
              decay_tests_table(res), edits_table(res)]
    preserve = preserve_table(res, seed=seed)
    if preserve.rows:  # only stores with preserve runs get the table
        tables.insert(-1, preserve)
    if findings_table is not None:
        tables.insert(0, findings_table)
    return tables


def format_value(value: Any, kind: str) -> str:
    """Human formatting shared by the HTML, Markdown, LaTeX and text renderers (CSV keeps raw values)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind == "pct":
        return f"{100.0 * float(value):.1f}"
    if kind == "num":
        return f"{float(value):.1f}"
    if kind == "float":
        v = float(value)
        return "inf" if math.isinf(v) and v > 0 else "-inf" if math.isinf(v) else f"{v:.3g}"
    if kind == "p":
        v = float(value)
        return "<0.001" if v < 0.001 else f"{v:.3f}"
    if kind == "int":
        return str(int(value))
    return str(value)
