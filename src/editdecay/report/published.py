"""The study's own numbers beside the same quantities measured in a results store.

The published figures are those of arXiv 2511.05852 (v4, "Can Fine-Tuning Erase Edits?", KDD'26) for the claims
:mod:`findings` tests. Each "here" cell is computed from the store the way the study states its number (mean
over the runs the cell names, ES points = 100 × (ES(M_ed) − ES(M_ed_ft))), over exactly the run pairs the claim's
test uses, with the per-edit ES magnitude P(new) − P(true) beside it (the continuous measure; see findings).
So a README table built from this one quotes nothing that the committed store cannot reproduce.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from editdecay import stats
from editdecay.report import findings as fnd
from editdecay.report.load import Results, Run
from editdecay.report.tables import Column, Table, mean_present

FT_LABELS = {"full": "full", "lora": "LoRA", "dora": "DoRA"}


@dataclass(frozen=True)
class Published:
    claim: str  # the claim as findings states it (the key to its verdict)
    study: str  # the study's numbers, as published
    here: Callable[[Results], str]  # the same quantity measured in a store


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _change(drop: float) -> str:
    """A drop in points as a signed change: 3.0 -> "−3.0", a gain -0.4 -> "+0.4"."""
    return f"−{drop:.1f}" if drop >= 0 else f"+{-drop:.1f}"


def _es_lost(res: Results, run: Run) -> float | None:
    """ES points lost by fine-tuning (100 × (ES(M_ed) − ES(M_ed_ft)))."""
    drop = fnd.efficacy_drop(res, run)
    return None if drop is None else 100.0 * drop


def _margin_lost(res: Results, runs: Iterable[Run]) -> float | None:
    """Mean per-edit ES-magnitude drop in points over the runs' edits (None when the store has no magnitudes)."""
    drops = [d for run in runs for d in fnd.magnitude_drops(res, run).values()]
    return 100.0 * sum(drops) / len(drops) if drops else None


def _es(res: Results, runs: list[Run], grp: str) -> float | None:
    value = mean_present(res.summary(r, grp, "efficacy") for r in runs)
    return None if value is None else 100.0 * value


def _downstream(res: Results, runs: list[Run], grp: str) -> float | None:
    value = mean_present(res.downstream_mean(r, grp) for r in runs)
    return None if value is None else 100.0 * value


def _all_layers(run: Run) -> bool:
    return run.layer_selection == "all" and run.preserve == "none"


def decay_here(res: Results) -> str:
    """Mean relative ES decrease per fine-tuning type over all-layer runs (the study's headline numbers)."""
    parts = []
    for ft in ("full", "lora", "dora"):
        runs = [r for r in res.runs if r.ft_type == ft and _all_layers(r) and _es_lost(res, r) is not None]
        rel = mean_present(stats.relative_decrease(res.summary(r, "M_ed", "efficacy"),
                                                   res.summary(r, "M_ed_ft", "efficacy")) for r in runs)
        if rel is None:
            continue
        margin = _margin_lost(res, runs)
        parts.append(f"{FT_LABELS[ft]} {rel:.2f}% ({len(runs)} run{'s' * (len(runs) != 1)}"
                     + (f"; ES magnitude {_change(margin)} points" if margin is not None else "") + ")")
    return ("mean relative ES decrease over all-layer runs: " + ", ".join(parts)) if parts \
        else "no all-layer runs with both evaluations"


def _pair_summary(res: Results, pairs: list[tuple[Run, Run]], a: str, b: str, what: str) -> str:
    lost = [(x, y, _es_lost(res, x), _es_lost(res, y)) for x, y in pairs]
    done = [(x, y, la, lb) for x, y, la, lb in lost if la is not None and lb is not None]
    if not done:
        return f"{what}: no finished {a} run paired with a finished {b} run ({len(pairs)} pairs in the store)"
    pairs = [(x, y) for x, y, _, _ in done]
    lost_a, lost_b = mean_present(la for *_, la, _ in done), mean_present(lb for *_, lb in done)
    text = (f"{what}: {_fmt(lost_a)} ({a}) vs {_fmt(lost_b)} ({b}) ES points lost over {len(pairs)} run "
            f"pair{'s' * (len(pairs) != 1)}")
    ma, mb = _margin_lost(res, [x for x, _ in pairs]), _margin_lost(res, [y for _, y in pairs])
    if ma is not None and mb is not None:
        text += f"; ES magnitude {_change(ma)} vs {_change(mb)} points"
    return text


def method_here(res: Results) -> str:
    pairs = fnd.pair_runs(res, "method", "alphaedit", "memit")
    lora = [(x, y) for x, y in pairs if x.ft_type == "lora" and _all_layers(x) and x.n_edits == 100]
    text = _pair_summary(res, lora, "AlphaEdit", "MEMIT", "LoRA, all layers, 100 edits")
    if len(pairs) > len(lora):
        text += "; " + _pair_summary(res, pairs, "AlphaEdit", "MEMIT", "every fine-tune")
    return text


def selective_here(res: Results) -> str:
    """ES (and downstream) after fine-tuning all / only the edited / only the non-edited layers, AlphaEdit first
    (the study's row), per fine-tuning type, over the seeds every selection has."""
    out = []
    for method in ("alphaedit", "memit"):
        for ft in ("full", "lora", "dora"):
            runs = [r for r in res.runs if r.method == method and r.ft_type == ft and r.preserve == "none"
                    and r.edit_data == "counterfact"]
            by_sel = {s: [r for r in runs if r.layer_selection == s] for s in ("all", "edited", "non-edited")}
            if not by_sel["edited"] and not by_sel["non-edited"]:
                continue
            key = {(r.key(drop=("layers",)), r.seed) for r in by_sel["edited"] or by_sel["non-edited"]}
            by_sel = {s: [r for r in rs if (r.key(drop=("layers",)), r.seed) in key] for s, rs in by_sel.items()}
            present = [s for s in ("all", "edited", "non-edited") if by_sel[s]]
            es = " / ".join(f"{_fmt(_es(res, by_sel[s], 'M_ed_ft'), 0)} {s}" for s in present)
            ds = " / ".join(_fmt(_downstream(res, by_sel[s], "M_ed_ft")) for s in present)
            first = by_sel[present[0]]
            out.append(f"{'AlphaEdit' if method == 'alphaedit' else 'MEMIT'}, {FT_LABELS[ft]}: ES "
                       f"{_fmt(_es(res, first, 'M_ed'), 0)} edited → {es}; downstream {ds}")
    return "; ".join(out) if out else "no layer-selection runs"


def non_edited_here(res: Results) -> str:
    return _pair_summary(res, fnd.pair_runs(res, "layers", "non-edited", "all"), "non-edited only", "all layers",
                         "paired over methods and fine-tuning types")


def hotpotqa_here(res: Results) -> str:
    return _pair_summary(res, fnd.pair_runs(res, "ft_data", "hotpotqa", "commonsense"), "HotpotQA", "commonsense",
                         "same edits and settings")


PUBLISHED: tuple[Published, ...] = (
    Published(fnd.CLAIM_DECAY, "mean relative ES decrease: full 38.10%, LoRA 28.71%, DoRA 29.88%", decay_here),
    Published(fnd.CLAIM_METHOD, "Llama-2, LoRA, 100 edits: 35.37 (AlphaEdit) vs 9.73 (MEMIT) ES points lost",
              method_here),
    Published(fnd.CLAIM_EDITED, "Llama-2, AlphaEdit, CounterFact, 100 edits: ES 96 edited → 98 all / 66 edited "
              "only / 72 non-edited only; downstream 81.7 / 65.43 / 80.61", selective_here),
    Published(fnd.CLAIM_NON_EDITED, "ES 72 (non-edited only) vs 98 (all layers), as above", non_edited_here),
    Published(fnd.CLAIM_HOTPOTQA, "v4: HotpotQA fine-tuning decays edits more than commonsense, by up to 14 ES "
              "points", hotpotqa_here),
)


def side_by_side_table(res: Results, findings: list[fnd.Finding]) -> Table:
    verdicts = {f.claim: f for f in findings}
    table = Table("side_by_side", "Side by side with the study",
                  "Each claim with the study's published numbers (arXiv 2511.05852 v4) and the same quantity "
                  "measured in this store (ES points = 100 × (ES(M_ed) − ES(M_ed_ft)), means over the paired runs "
                  "the claim's test uses; ES magnitude = per-edit P(new) − P(true), mean drop), with the verdict of the claim's "
                  "test and, after the semicolon, its verdict on ES magnitude.",
                  [Column("claim", "claim"), Column("study", "the study"), Column("here", "here"),
                   Column("verdict", "holds here?")], text_records=True)
    for item in PUBLISHED:
        finding = verdicts.get(item.claim)
        verdict = "–" if finding is None else f"{finding.verdict}; on ES magnitude: {finding.margin_verdict}"
        table.rows.append({"claim": item.claim, "study": item.study, "here": item.here(res), "verdict": verdict})
    return table
