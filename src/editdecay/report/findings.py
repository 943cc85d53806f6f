"""The study's claims (four, and v4's HotpotQA one), each checked against a results store with the test that
backs the verdict.

Outcome of a run: the efficacy drop ES(M_ed) − ES(M_ed_ft) (absolute, fraction of edits). Comparisons between
two conditions (AlphaEdit vs MEMIT, one layer selection vs another) pair runs that agree on every other factor
and the seed. With at least ``min_pairs`` pairs the verdict rests on the paired t-test (Wilcoxon and Cohen's dz
reported alongside); with fewer, on McNemar's exact test per edit (edits of paired runs matched by case_id,
among those that succeeded under both conditions before fine-tuning: "flipped under A only" vs "under B
only"). A claim is *supported* when the effect points the claimed way and p < alpha, *not supported* when it
does not, and *not enough data* when the store has no run pairs to compare.

Each claim is also judged on the continuous measure beside binary success, the per-edit ES magnitude
P(new) − P(true) (MEMIT's "efficacy magnitude"), where the store has it: success can hold while the margin
shrinks, which is what decay looks like at budgets too small to flip edits. Decay: Wilcoxon signed-rank of the
magnitudes before vs after fine-tuning. A comparison: Wilcoxon signed-rank of the per-edit magnitude drops under
``a`` vs under ``b``, edits matched by case_id across paired runs. That verdict is reported beside the study's
(``margin_verdict``), never in its place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from editdecay import stats
from editdecay.report.load import Results, Run
from editdecay.report.tables import Column, Table, efficacy_drop_tests

SUPPORTED, NOT_SUPPORTED, NO_DATA = "supported", "not supported", "not enough data"
CLAIM_DECAY = "Edits decay: fine-tuning lowers the efficacy of edits"
CLAIM_METHOD = "AlphaEdit edits decay more than MEMIT edits"
CLAIM_EDITED = "Fine-tuning only the edited layers removes edits best"
CLAIM_NON_EDITED = "Fine-tuning only the non-edited layers erases more edits than full fine-tuning"
CLAIM_HOTPOTQA = "Fine-tuning on HotpotQA decays edits more than on commonsense (v4)"


@dataclass
class Finding:
    claim: str
    verdict: str
    evidence: str  # one sentence with the numbers
    tests: list[stats.TestResult] = field(default_factory=list)
    margin_verdict: str = NO_DATA  # the same claim judged on per-edit ES magnitude (module docstring)
    margin_evidence: str = "no per-edit ES magnitudes in the store"


def efficacy_drop(res: Results, run: Run) -> float | None:
    """ES(M_ed) − ES(M_ed_ft) of one run (a fraction); None until both evaluations are in the store."""
    a, b = res.summary(run, "M_ed", "efficacy"), res.summary(run, "M_ed_ft", "efficacy")
    return None if a is None or b is None else a - b


def pair_runs(res: Results, factor: str, a: str, b: str) -> list[tuple[Run, Run]]:
    """Runs with ``factor == a`` paired with the run with ``factor == b`` that agrees on everything else."""
    def value(run: Run) -> str:
        return run.layer_selection if factor == "layers" else str(getattr(run, factor))

    index = {(run.key(drop=(factor,)), run.seed): run for run in res.runs if value(run) == b}
    pairs = []
    for run in res.runs:
        if value(run) == a and (partner := index.get((run.key(drop=(factor,)), run.seed))) is not None:
            pairs.append((run, partner))
    return pairs


def _verdict(test: stats.TestResult, alpha: float, direction_ok: bool) -> str:
    if math.isnan(test.pvalue):
        return NO_DATA
    return SUPPORTED if direction_ok and test.pvalue < alpha else NOT_SUPPORTED


def compare_conditions(res: Results, claim: str, factor: str, a: str, b: str, alpha: float = 0.05,
                       min_pairs: int = 3) -> Finding:
    """Claim: condition ``a`` removes more edits (larger efficacy drop) than condition ``b``."""
    pairs = pair_runs(res, factor, a, b)
    drops = [(efficacy_drop(res, x), efficacy_drop(res, y)) for x, y in pairs]
    complete = [(da, db) for da, db in drops if da is not None and db is not None]
    if len(complete) >= min_pairs:
        da, db = [d[0] for d in complete], [d[1] for d in complete]
        t, w = stats.paired_ttest(da, db), stats.wilcoxon_signed_rank(da, db)
        verdict = _verdict(t, alpha, t.mean_diff > 0)
        evidence = (f"efficacy drop {a} − {b} = {100 * t.mean_diff:+.1f} points over {t.n} paired runs; "
                    f"{t.describe()}; {w.describe()}")
        return _with_margin(Finding(claim, verdict, evidence, [t, w]), res, pairs, a, b, alpha)
    flips_a: list[bool] = []
    flips_b: list[bool] = []
    for x, y in pairs:
        sa = stats.survived(res.per_record(x, "M_ed"), res.per_record(x, "M_ed_ft"), "efficacy")
        sb = stats.survived(res.per_record(y, "M_ed"), res.per_record(y, "M_ed_ft"), "efficacy")
        for case in sorted(set(sa) & set(sb)):
            flips_a.append(not sa[case])
            flips_b.append(not sb[case])
    if not flips_a:
        return _with_margin(Finding(claim, NO_DATA, f"no runs with {factor} = {a} paired with {factor} = {b} "
                                    "(same other settings and seed) that have per-edit results"),
                            res, pairs, a, b, alpha)
    m = stats.mcnemar_exact(flips_a, flips_b)
    # the McNemar effect here is (flipped under a only − flipped under b only) / n: positive = a removes more
    verdict = _verdict(m, alpha, m.effect > 0)
    evidence = (f"fewer than {min_pairs} paired runs with both evaluations ({len(complete)} of {len(pairs)} pairs), "
                f"so per edit: of {m.n} edits successful under "
                f"both before fine-tuning, flip rate {a} {100 * sum(flips_a) / m.n:.1f}% vs {b} "
                f"{100 * sum(flips_b) / m.n:.1f}%; {m.describe()}")
    return _with_margin(Finding(claim, verdict, evidence, [m]), res, pairs, a, b, alpha)


def magnitude_drops(res: Results, run: Run) -> dict[str, float]:
    """Per edit: ES magnitude of M_ed minus that of M_ed_ft (case_id -> drop), where both are stored."""
    before, after = res.per_record(run, "M_ed"), res.per_record(run, "M_ed_ft")
    return {case: before[case]["efficacy_magnitude"] - after[case]["efficacy_magnitude"]
            for case in sorted(set(before) & set(after))
            if "efficacy_magnitude" in before[case] and "efficacy_magnitude" in after[case]}


def _with_margin(finding: Finding, res: Results, pairs: list[tuple[Run, Run]], a: str, b: str,
                 alpha: float) -> Finding:
    """Add the margin verdict of "``a`` removes more than ``b``": per-edit magnitude drops, paired by case_id."""
    drops_a: list[float] = []
    drops_b: list[float] = []
    for x, y in pairs:
        da, db = magnitude_drops(res, x), magnitude_drops(res, y)
        for case in sorted(set(da) & set(db)):
            drops_a.append(da[case])
            drops_b.append(db[case])
    if not drops_a:
        finding.margin_evidence = ("no run pairs to compare" if not pairs
                                   else "no per-edit ES magnitudes for the paired runs in the store")
        return finding
    w = stats.wilcoxon_signed_rank(drops_a, drops_b)
    diff = sum(drops_a) / len(drops_a) - sum(drops_b) / len(drops_b)
    finding.margin_verdict = _verdict(w, alpha, diff > 0)
    finding.margin_evidence = (f"ES magnitude drop per edit {a} {100 * sum(drops_a) / len(drops_a):.1f} vs {b} "
                               f"{100 * sum(drops_b) / len(drops_b):.1f} points ({diff * 100:+.1f}) over {w.n} "
                               f"paired edits; {w.describe()}")
    return finding


def edits_decay(res: Results, alpha: float = 0.05, min_pairs: int = 3) -> Finding:
    claim = CLAIM_DECAY
    runs = [r for r in res.runs if res.eval_id(r, "M_ed") and res.eval_id(r, "M_ed_ft")]
    tests = efficacy_drop_tests(res, runs, min_pairs) if runs else []
    if not tests:
        return Finding(claim, NO_DATA, "no run has both M_ed and M_ed_ft evaluations")
    main = tests[0]
    verdict = _verdict(main, alpha, main.mean_diff > 0)
    if main.test.startswith("paired"):
        evidence = (f"ES drops by {100 * main.mean_diff:.1f} points on average over {main.n} runs; "
                    + "; ".join(t.describe() for t in tests))
    else:
        evidence = f"per edit over {main.n} edits: " + main.describe()
    strength = magnitude_drop_test(res, runs)
    if strength is not None:  # success can hold while the margin shrinks: the continuous signal, reported beside
        test, drop, n = strength
        tests = [*tests, test]
        evidence += (f". ES magnitude (P(new) − P(true) per edit) is {100 * drop:.1f} points lower on average after "
                     f"fine-tuning over {n} edits: {test.describe()} (reported beside the verdict, not its test)")
        return Finding(claim, verdict, evidence, tests, _verdict(test, alpha, drop > 0),
                       f"ES magnitude {100 * drop:.1f} points lower after fine-tuning over {n} edits; "
                       f"{test.describe()}")
    return Finding(claim, verdict, evidence, tests)


def magnitude_drop_test(res: Results, runs: list[Run]) -> tuple[stats.TestResult, float, int] | None:
    """Wilcoxon signed-rank on per-edit ES magnitude, M_ed vs M_ed_ft, pooled over runs (matched by case_id),
    with the mean drop over all those edits and their number."""
    before: list[float] = []
    after: list[float] = []
    for run in runs:
        b, a = res.per_record(run, "M_ed"), res.per_record(run, "M_ed_ft")
        for case in sorted(set(b) & set(a)):
            if "efficacy_magnitude" in b[case] and "efficacy_magnitude" in a[case]:
                before.append(b[case]["efficacy_magnitude"])
                after.append(a[case]["efficacy_magnitude"])
    if not before:
        return None
    drop = sum(b - a for b, a in zip(before, after, strict=True)) / len(before)
    return stats.wilcoxon_signed_rank(before, after), drop, len(before)


def all_findings(res: Results, alpha: float = 0.05, min_pairs: int = 3) -> list[Finding]:
    findings = [
        edits_decay(res, alpha, min_pairs),
        compare_conditions(res, CLAIM_METHOD, "method", "alphaedit", "memit", alpha, min_pairs),
    ]
    vs_all = compare_conditions(res, "", "layers", "edited", "all", alpha, min_pairs)
    vs_non = compare_conditions(res, "", "layers", "edited", "non-edited", alpha, min_pairs)
    parts = [vs_all, vs_non]
    findings.append(Finding(CLAIM_EDITED, _both([p.verdict for p in parts]),
                            f"vs all layers: {vs_all.verdict} ({vs_all.evidence}). vs non-edited layers: "
                            f"{vs_non.verdict} ({vs_non.evidence})", vs_all.tests + vs_non.tests,
                            _both([p.margin_verdict for p in parts]),
                            f"vs all layers: {vs_all.margin_verdict} ({vs_all.margin_evidence}). vs non-edited "
                            f"layers: {vs_non.margin_verdict} ({vs_non.margin_evidence})"))
    findings.append(compare_conditions(res, CLAIM_NON_EDITED, "layers", "non-edited", "all", alpha, min_pairs))
    findings.append(compare_conditions(res, CLAIM_HOTPOTQA, "ft_data", "hotpotqa", "commonsense", alpha, min_pairs))
    return findings


def _both(verdicts: list[str]) -> str:
    """A claim made of parts holds when every part does; it fails when one part fails, else there is no data."""
    kinds = set(verdicts)
    return SUPPORTED if kinds == {SUPPORTED} else NOT_SUPPORTED if NOT_SUPPORTED in kinds else NO_DATA


def findings_table(findings: list[Finding]) -> Table:
    table = Table("findings", "Findings", "Each claim of the study, the verdict on these results, and its statistic.",
                  [Column("claim", "claim"), Column("verdict", "verdict"), Column("test", "test"),
                   Column("p", "p", "p"), Column("effect", "effect", "float"), Column("effect_name", "effect size"),
                   Column("evidence", "evidence"), Column("margin_verdict", "verdict on ES magnitude"),
                   Column("margin_evidence", "ES magnitude evidence")])
    for f in findings:
        main = f.tests[0] if f.tests else None
        table.rows.append({"claim": f.claim, "verdict": f.verdict, "test": main.test if main else None,
                           "p": main.pvalue if main else None, "effect": main.effect if main else None,
                           "effect_name": main.effect_name if main else None, "evidence": f.evidence,
                           "margin_verdict": f.margin_verdict, "margin_evidence": f.margin_evidence})
    return table
