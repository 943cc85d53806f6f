"""Statistics behind every number the project reports: paired tests, effect sizes, bootstrap CIs, decay.

One module, below ``evaluate`` (``evaluate.decay.compare``) and ``report`` (tables, findings, plots), so an
edit's success, its survival and every test mean the same thing wherever they are computed. Each test is
written out from its textbook definition (so the numbers can be checked by hand) and unit-tested against scipy
on the same inputs (tests/test_stats.py, tests/evaluate/test_decay.py); scipy is used here only for the t
distribution's tail.

- An edit *succeeds* on a metric when its per-record value exceeds ``SUCCESS_THRESHOLD`` (0.5: a strict
  majority of its prompts, or of its target tokens for zsRE; CounterFact ES is already 0/1).
- :func:`decay`: EFR, emergent edits, survival, relative decrease and McNemar's test of one pair of
  evaluations (aligned arrays); :func:`match_records` pairs two evaluations by case_id (for
  ``evaluate.decay.compare`` and the report alike), and ``compare`` adds the CI.
- Paired t-test on differences d = a - b: t = mean(d) / (sd(d) / sqrt(n)), df = n - 1, two-sided.
- Cohen's d_z for paired data: mean(d) / sd(d) (sd with ddof=1).
- Wilcoxon signed-rank (zeros dropped, as scipy's default "wilcox"): exact null distribution of W+ when there
  are no ties and n <= 50, else the normal approximation with the tie-corrected variance (no continuity
  correction). Effect size: matched-pairs rank-biserial r = (W+ - W-) / (W+ + W-).
- McNemar's exact test for paired binary outcomes: the discordant counts b, c; p = min(1, 2 P(X <= min(b, c)))
  with X ~ Binomial(b + c, 1/2), summed exactly in integers.
- Percentile bootstrap CI of a mean, seeded (numpy default_rng), ``N_RESAMPLES`` = 1,000 resamples everywhere.
- Spearman's rho (average ranks for ties) with the t-approximation p-value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from editdecay.errors import ConfigError, DataError

SUCCESS_THRESHOLD = 0.5
N_RESAMPLES = 1000  # bootstrap resamples of every CI (compare, the CLI and the report)


@dataclass(frozen=True)
class TestResult:
    """One test's outcome: the statistic, two-sided p-value, sample size, and an effect size with its name."""

    test: str
    statistic: float
    pvalue: float
    n: int
    effect: float
    effect_name: str
    mean_diff: float = math.nan

    def describe(self) -> str:
        if self.n == 0 or math.isnan(self.statistic) and math.isnan(self.pvalue):
            return f"{self.test}: not computable (n = {self.n}{', all differences zero' if self.n == 0 else ''})"
        p = f"p = {self.pvalue:.3g}" if not math.isnan(self.pvalue) else "p = n/a"
        return f"{self.test}: statistic = {self.statistic:.3g}, {p}, n = {self.n}, {self.effect_name} = {self.effect:.3g}"


def _diffs(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise DataError("paired test", f"paired samples must be 1-D and equally long (got {a_arr.shape} and {b_arr.shape})")
    d = a_arr - b_arr
    return d[~np.isnan(d)]


def cohens_dz(a: Sequence[float], b: Sequence[float]) -> float:
    """Standardised mean of paired differences; nan when fewer than 2 pairs, ±inf when all differences are equal."""
    d = _diffs(a, b)
    if d.size < 2:
        return math.nan
    sd = float(np.std(d, ddof=1))
    mean = float(np.mean(d))
    if sd == 0.0:
        return 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    return mean / sd


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Two-sided paired t-test of mean(a - b) = 0, with Cohen's d_z."""
    from scipy.stats import t as t_dist

    d = _diffs(a, b)
    n = int(d.size)
    mean = float(np.mean(d)) if n else math.nan
    if n < 2:
        return TestResult("paired t-test", math.nan, math.nan, n, math.nan, "Cohen's dz", mean)
    sd = float(np.std(d, ddof=1))
    if sd == 0.0:
        stat = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        p = 1.0 if mean == 0.0 else 0.0
    else:
        stat = mean / (sd / math.sqrt(n))
        p = float(min(1.0, 2.0 * t_dist.sf(abs(stat), n - 1)))
    return TestResult("paired t-test", stat, p, n, cohens_dz(a, b), "Cohen's dz", mean)


def rankdata(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    arr = np.asarray(x, dtype=float)
    order = np.argsort(arr, kind="mergesort")
    ranks = np.empty(arr.size, dtype=float)
    sorted_vals = arr[order]
    i = 0
    while i < arr.size:
        j = i
        while j + 1 < arr.size and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def _signed_rank_null_counts(n: int) -> np.ndarray:
    """counts[w] = number of sign assignments of ranks 1..n whose positive-rank sum is w (exact null of W+)."""
    total = n * (n + 1) // 2
    counts = np.zeros(total + 1, dtype=object)  # python ints: exact for any n
    counts[0] = 1
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[: total + 1 - r].copy()
    return counts


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Two-sided Wilcoxon signed-rank test on a - b (zero differences dropped)."""
    d = _diffs(a, b)
    d = d[d != 0]
    n = int(d.size)
    if n == 0:
        return TestResult("Wilcoxon signed-rank", math.nan, math.nan, 0, math.nan, "rank-biserial r", math.nan)
    ranks = rankdata(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    w_minus = float(ranks[d < 0].sum())
    r_rb = (w_plus - w_minus) / (w_plus + w_minus)
    has_ties = np.unique(np.abs(d)).size < n
    if not has_ties and n <= 50:
        counts = _signed_rank_null_counts(n)
        total = 2 ** n
        w = int(round(w_plus))
        cdf = sum(counts[: w + 1]) / total
        sf = sum(counts[w:]) / total
        p = float(min(1.0, 2.0 * min(cdf, sf)))
        method = "exact"
    else:
        _, tie_counts = np.unique(ranks, return_counts=True)
        mean = n * (n + 1) / 4.0
        var = n * (n + 1) * (2 * n + 1) / 24.0 - float(np.sum(tie_counts ** 3 - tie_counts)) / 48.0
        z = (w_plus - mean) / math.sqrt(var) if var > 0 else 0.0
        p = float(math.erfc(abs(z) / math.sqrt(2.0)))
        method = "normal approx."
    return TestResult(f"Wilcoxon signed-rank ({method})", min(w_plus, w_minus), p, n, r_rb, "rank-biserial r",
                      float(np.mean(d)))


def binom_cdf(k: int, n: int, p: float = 0.5) -> float:
    """P(X <= k) for X ~ Binomial(n, p). For p = 1/2 (McNemar) summed exactly in integers, sum C(n, i) / 2^n,
    and rounded once, so any n works (a float sum of C(n, i) p^i (1-p)^(n-i) overflows past ~1,030 trials);
    other p in log space."""
    if k < 0:
        return 0.0
    k = min(k, n)
    if p == 0.5:
        return float(Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2 ** n))
    if p <= 0.0 or p >= 1.0:
        return 1.0 if (p <= 0.0 or k == n) else 0.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
            + (n - i) * math.log1p(-p) for i in range(k + 1)]
    top = max(logs)
    return float(min(1.0, math.exp(top) * math.fsum(math.exp(v - top) for v in logs)))


def mcnemar_exact(before: Sequence[bool], after: Sequence[bool]) -> TestResult:
    """McNemar's exact test on paired binary outcomes (e.g. per-edit success before vs after fine-tuning).

    b = successes lost (before and not after), c = gained. Effect: the paired difference in success
    proportions, (b - c) / n (the drop in success rate).
    """
    x, y = np.asarray(before, dtype=bool), np.asarray(after, dtype=bool)
    if x.shape != y.shape:
        raise DataError("McNemar test", f"paired outcomes must be equally long (got {x.size} and {y.size})")
    b = int(np.sum(x & ~y))
    c = int(np.sum(~x & y))
    n = int(x.size)
    p = 1.0 if b + c == 0 else min(1.0, 2.0 * binom_cdf(min(b, c), b + c))
    effect = (b - c) / n if n else math.nan
    return TestResult(f"McNemar exact (b={b}, c={c})", float(min(b, c)), p, n, effect, "success-rate drop", effect)


def bootstrap_ci(values: Sequence[float], *, confidence: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0,
                 n_boot: int | None = None) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (NaN values dropped), reproducible through ``seed``.

    ``n_boot`` is the same count under the name ``compare`` and ``editdecay compare --n-boot`` use.
    """
    if n_boot is not None:
        n_resamples = n_boot
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_resamples, arr.size))
    means = arr[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rho (Pearson correlation of average ranks) and its two-sided t-approximation p-value."""
    from scipy.stats import t as t_dist

    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = xa.size
    if n < 3 or np.all(xa == xa[0]) or np.all(ya == ya[0]):
        return (math.nan, math.nan)
    rx, ry = rankdata(xa), rankdata(ya)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    rho = float(np.sum(rx * ry) / math.sqrt(np.sum(rx ** 2) * np.sum(ry ** 2)))
    rho = max(-1.0, min(1.0, rho))
    if abs(rho) == 1.0:
        return (rho, 0.0)
    t = rho * math.sqrt((n - 2) / (1.0 - rho ** 2))
    return (rho, float(2.0 * t_dist.sf(abs(t), n - 2)))


# --- decay: one pair of evaluations of the same edits (before and after fine-tuning) ------------------------

def check_threshold(threshold: float) -> float:
    if not 0.0 <= threshold < 1.0:
        raise ConfigError(f"threshold must be in [0, 1), got {threshold}")
    return threshold


@dataclass(frozen=True)
class Decay:
    """How one metric's per-edit results changed between two evaluations of the same edits (aligned arrays)."""

    n: int
    succeeded_before: int
    failed_before: int
    flipped: int  # succeeded before, fail after (McNemar's b)
    emerged: int  # failed before, succeed after (McNemar's c)
    mean_before: float
    mean_after: float
    survived: np.ndarray  # float 0/1 per edit that succeeded before, in input order
    mcnemar: TestResult

    @property
    def efr(self) -> float | None:
        """Edit Flip Ratio: of the edits that succeeded before, the share failing after."""
        return self.flipped / self.succeeded_before if self.succeeded_before else None

    @property
    def emergent(self) -> float | None:
        """Of the edits that failed before, the share succeeding after."""
        return self.emerged / self.failed_before if self.failed_before else None

    @property
    def survival(self) -> float | None:
        """Of the edits that succeeded before, the share still succeeding (1 - EFR)."""
        return float(self.survived.mean()) if self.succeeded_before else None

    @property
    def relative_decrease(self) -> float | None:
        """(mean before - mean after) / mean before in %; None when the mean before is 0."""
        return relative_decrease(self.mean_before, self.mean_after) if self.mean_before else None


def decay(before: Sequence[float], after: Sequence[float], threshold: float = SUCCESS_THRESHOLD) -> Decay:
    """Counts, rates and McNemar's test of per-edit values ``before`` vs ``after`` (same edits, same order); an
    edit succeeds when its value is above ``threshold``."""
    vb, va = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if vb.shape != va.shape or vb.ndim != 1:
        raise DataError("decay", f"paired values must be 1-D and equally long (got {vb.shape} and {va.shape})")
    sb, sa = vb > threshold, va > threshold
    return Decay(n=int(vb.size), succeeded_before=int(sb.sum()), failed_before=int((~sb).sum()),
                 flipped=int((sb & ~sa).sum()), emerged=int((~sb & sa).sum()), mean_before=float(vb.mean()),
                 mean_after=float(va.mean()), survived=sa[sb].astype(np.float64), mcnemar=mcnemar_exact(sb, sa))


# --- matching two evaluations by case_id (compare's JSON and the report's per-record rows) ------------------

def _rows(evaluation: Mapping[str, Any] | Sequence[Mapping[str, Any]], name: str) -> dict[str, Mapping[str, Any]]:
    """Evaluation JSON (with "records") or a list of per-record dicts -> case_id -> row."""
    rows = evaluation.get("records") if isinstance(evaluation, Mapping) else evaluation
    if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)):
        raise DataError(name, "expected an evaluation with a 'records' list of per-record results", field="records")
    out: dict[str, Mapping[str, Any]] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping) or "case_id" not in row:
            raise DataError(name, "per-record result needs a 'case_id'", index, "case_id")
        case_id = str(row["case_id"])
        if case_id in out:
            raise DataError(name, f"duplicate case_id {case_id!r}", index, "case_id")
        out[case_id] = row
    if not out:
        raise DataError(name, "has no per-record results", field="records")
    return out


def match_records(
    before: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    after: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    before_name: str = "before",
    after_name: str = "after",
) -> tuple[list[str], dict[str, Mapping[str, Any]], dict[str, Mapping[str, Any]]]:
    """Case ids (in ``before`` order) and both row maps; a clear error when the record sets differ."""
    b, a = _rows(before, before_name), _rows(after, after_name)
    only_b, only_a = [c for c in b if c not in a], [c for c in a if c not in b]
    if only_b or only_a:
        raise DataError(
            f"{before_name} vs {after_name}",
            f"the evaluations cover different records: {len(only_b)} only in {before_name} "
            f"(e.g. {only_b[:5]}), {len(only_a)} only in {after_name} (e.g. {only_a[:5]}); compare evaluations "
            "of the same records",
            field="case_id",
        )
    return list(b), b, a


# --- per-record maps (case_id -> {metric: value}), as the report reads them from the store -------------------

def matched(before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]],
            metric: str, where: str = "") -> tuple[list[str], np.ndarray, np.ndarray]:
    """Values of ``metric`` for the case_ids present in both evaluations (sorted by case_id)."""
    ids = sorted(set(before) & set(after))
    if before and after and not ids:
        raise DataError(where or "decay", "the two evaluations share no case_id: they are not of the same records")
    ids = [c for c in ids if metric in before[c] and metric in after[c]]
    x = np.array([before[c][metric] for c in ids], dtype=float)
    y = np.array([after[c][metric] for c in ids], dtype=float)
    return ids, x, y


def relative_decrease(before: float | None, after: float | None) -> float:
    """(before - after) / before in %; nan when before is 0 or missing."""
    if before is None or after is None or before == 0 or math.isnan(before) or math.isnan(after):
        return math.nan
    return (before - after) / before * 100.0


def survived(before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]], metric: str,
             threshold: float = SUCCESS_THRESHOLD) -> dict[str, bool]:
    """case_id -> whether an edit that succeeded before still succeeds after (edits failing before are left out)."""
    ids, x, y = matched(before, after, metric)
    return {c: bool(b > threshold) for c, a, b in zip(ids, x, y, strict=True) if a > threshold}


CATEGORIES = ("stable", "erased", "emergent", "impossible")


def categorize(before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]], metric: str,
               threshold: float = SUCCESS_THRESHOLD) -> dict[str, str]:
    """case_id -> the study's edit category between the edited and the edited-then-fine-tuned model: stable
    (holds before and after), erased (held, then not), emergent (did not hold, then did), impossible (neither)."""
    ids, x, y = matched(before, after, metric)
    names = {(True, True): "stable", (True, False): "erased", (False, True): "emergent", (False, False): "impossible"}
    return {c: names[(bool(a > threshold), bool(b > threshold))] for c, a, b in zip(ids, x, y, strict=True)}


def harmonic_mean(values: Sequence[float | None]) -> float | None:
    """MEMIT's composite Score of ES, PS and NS: their harmonic mean (0 when any is 0, None when any is missing)."""
    if not values or any(v is None for v in values):
        return None
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


__all__ = ["SUCCESS_THRESHOLD", "N_RESAMPLES", "TestResult", "cohens_dz", "paired_ttest", "rankdata",
           "wilcoxon_signed_rank", "binom_cdf", "mcnemar_exact", "bootstrap_ci", "spearman", "check_threshold",
           "Decay", "decay", "matched", "relative_decrease", "survived", "CATEGORIES", "categorize", "harmonic_mean",
           "DataError"]
