"""Decay metrics: how an edited model's per-record results change after fine-tuning (the same records).

For each success metric (``efficacy``, ``paraphrase``, ``neighborhood`` and the ``*_acc`` argmax variants) an
edit *succeeds* on a record when its per-record value is above ``threshold`` (default 0.5: a strict majority
of its prompts, or of its target tokens for zsRE; CounterFact ES is already 0/1). Then

- EFR (Edit Flip Ratio): of the edits that succeeded before, the fraction that fail after;
- relative decrease: ``(mean_before - mean_after) / mean_before`` in percent, on the per-record values;
- emergent: of the edits that failed before, the fraction that succeed after;
- survival: of the edits that succeeded before, the fraction that still succeed (``1 - EFR``), with a seeded
  percentile-bootstrap confidence interval over those edits.

The statistics themselves (success threshold, the counts and rates, McNemar, the paired tests, the bootstrap)
are :mod:`editdecay.stats`, shared with the report (the matching by case_id too, ``stats.match_records``); this
module writes the results in the JSON shape of ``editdecay compare``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from editdecay import stats
from editdecay.errors import ConfigError, DataError
from editdecay.stats import match_records

SUCCESS_METRICS = ("efficacy", "paraphrase", "neighborhood", "efficacy_acc", "paraphrase_acc", "neighborhood_acc")


def compare(
    before: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    after: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    metrics: Sequence[str] | None = None,
    threshold: float = stats.SUCCESS_THRESHOLD,
    n_boot: int = stats.N_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
    before_name: str = "before",
    after_name: str = "after",
) -> dict[str, Any]:
    """EFR, relative decrease, emergent edits and survival (with bootstrap CI), each keyed by metric name.

    ``before``/``after`` are evaluation JSONs (or their ``records`` lists) of the same records, matched by
    ``case_id``. Metrics default to the success metrics both evaluations hold. Undefined values (no edit
    succeeded before, a zero mean before) are ``None``.
    """
    stats.check_threshold(threshold)
    ids, b, a = match_records(before, after, before_name, after_name)
    if metrics is None:
        metrics = [m for m in SUCCESS_METRICS
                   if any(m in b[c] for c in ids) and any(m in a[c] for c in ids)]
        if not metrics:
            raise DataError(f"{before_name} vs {after_name}", f"no shared success metric ({', '.join(SUCCESS_METRICS)})")
    out: dict[str, Any] = {"efr": {}, "relative_decrease": {}, "emergent": {}, "survival": {}, "counts": {},
                           "means": {}, "paired": {}, "n_records": len(ids), "threshold": threshold}
    for metric in metrics:
        pairs = [(b[c][metric], a[c][metric]) for c in ids if b[c].get(metric) is not None
                 and a[c].get(metric) is not None]
        missing = [c for c in ids if (b[c].get(metric) is None) != (a[c].get(metric) is None)]
        if missing:
            raise DataError(f"{before_name} vs {after_name}", f"metric {metric!r} is present in only one evaluation "
                            f"for records {missing[:5]}", field=metric)
        if not pairs:
            raise DataError(f"{before_name} vs {after_name}", f"no record has metric {metric!r}", field=metric)
        d = stats.decay([p[0] for p in pairs], [p[1] for p in pairs], threshold)
        out["efr"][metric] = d.efr
        out["emergent"][metric] = d.emergent
        out["relative_decrease"][metric] = d.relative_decrease
        low, high = (stats.bootstrap_ci(d.survived, n_resamples=n_boot, confidence=confidence, seed=seed)
                     if d.succeeded_before else (None, None))
        out["survival"][metric] = {"rate": d.survival, "ci_low": low, "ci_high": high, "confidence": confidence,
                                   "n": d.succeeded_before}
        out["counts"][metric] = {"n": d.n, "succeeded_before": d.succeeded_before, "failed_before": d.failed_before,
                                 "flipped": d.flipped, "emerged": d.emerged}
        out["means"][metric] = {"before": d.mean_before, "after": d.mean_after}
        out["paired"][metric] = _mcnemar_json(d.flipped, d.emerged, d.mcnemar)
    return out


def _mcnemar_json(lost: int, gained: int, result: stats.TestResult) -> dict[str, Any]:
    return {"test": "mcnemar-exact", "lost": lost, "gained": gained, "p_value": result.pvalue}


def mcnemar(before_success: Sequence[bool], after_success: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test on paired binary outcomes (:func:`editdecay.stats.mcnemar_exact`), as compare's JSON."""
    sb = np.asarray(before_success, dtype=bool)
    sa = np.asarray(after_success, dtype=bool)
    if sb.shape != sa.shape:
        raise ConfigError(f"paired outcomes differ in length: {sb.shape} vs {sa.shape}")
    return _mcnemar_json(int((sb & ~sa).sum()), int((~sb & sa).sum()), stats.mcnemar_exact(sb, sa))


def paired_test(before: Sequence[float], after: Sequence[float], test: str = "ttest") -> dict[str, Any]:
    """Paired test of before vs after across seeds (or any pairing): ``ttest`` (:func:`editdecay.stats.paired_ttest`)
    or ``wilcoxon`` (:func:`editdecay.stats.wilcoxon_signed_rank`), as compare's JSON."""
    x, y = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ConfigError(f"paired test needs two equal-length 1-D samples, got {x.shape} and {y.shape}")
    if x.size < 2:
        raise ConfigError(f"paired test needs at least 2 pairs (seeds), got {x.size}")
    if test == "ttest":
        res = stats.paired_ttest(x, y)
    elif test == "wilcoxon":
        res = stats.wilcoxon_signed_rank(x, y)
    else:
        raise ConfigError(f"unknown paired test {test!r}; use 'ttest' or 'wilcoxon'")
    return {"test": test, "statistic": float(res.statistic), "p_value": float(res.pvalue), "n": int(x.size),
            "mean_diff": float((x - y).mean())}


def seed_comparison(
    evaluations: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    metric: str = "efficacy",
    test: str = "ttest",
) -> dict[str, Any]:
    """Paired test across seeds of one metric's mean before vs after: one (before, after) pair per seed."""
    before, after = [], []
    for k, (b, a) in enumerate(evaluations):
        ids, rb, ra = match_records(b, a, f"seed {k} before", f"seed {k} after")
        if not any(rb[c].get(metric) is not None for c in ids):
            raise DataError(f"seed {k}", f"no record has metric {metric!r}", field=metric)
        before.append(float(np.mean([rb[c][metric] for c in ids if rb[c].get(metric) is not None])))
        after.append(float(np.mean([ra[c][metric] for c in ids if ra[c].get(metric) is not None])))
    result = paired_test(before, after, test=test)
    result.update({"metric": metric, "before": before, "after": after})
    return result
