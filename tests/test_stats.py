"""The report's statistics: closed forms on hand-made numbers, and agreement with scipy on random samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as ss

from editdecay import stats


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_paired_ttest_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 30))
    a = rng.normal(size=n)
    b = a + rng.normal(0.3, 1.0, size=n)
    mine, ref = stats.paired_ttest(a, b), ss.ttest_rel(a, b)
    assert mine.statistic == pytest.approx(float(ref.statistic), rel=1e-10)
    assert mine.pvalue == pytest.approx(float(ref.pvalue), rel=1e-9)
    assert mine.n == n and mine.mean_diff == pytest.approx(float(np.mean(a - b)))


def test_cohens_dz_closed_form():
    # d = (1, 2, 3): mean 2, sd 1 -> dz = 2; t = dz * sqrt(n)
    a, b = [2.0, 4.0, 6.0], [1.0, 2.0, 3.0]
    assert stats.cohens_dz(a, b) == pytest.approx(2.0)
    t = stats.paired_ttest(a, b)
    assert t.effect == pytest.approx(2.0) and t.statistic == pytest.approx(2.0 * math.sqrt(3))
    assert stats.cohens_dz([1.0, 2.0], [0.0, 1.0]) == math.inf  # constant positive difference
    assert math.isnan(stats.cohens_dz([1.0], [0.0]))


def test_signed_rank_null_distribution_closed_form():
    # n = 3: the 8 sign patterns give W+ in {0,1,2,3,3,4,5,6}
    assert list(stats._signed_rank_null_counts(3)) == [1, 1, 1, 2, 1, 1, 1]
    counts = stats._signed_rank_null_counts(10)
    assert sum(counts) == 2 ** 10 and list(counts) == list(counts[::-1])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_wilcoxon_exact_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 25))
    a = rng.normal(size=n)
    b = a - rng.normal(0.4, 1.0, size=n)
    mine, ref = stats.wilcoxon_signed_rank(a, b), ss.wilcoxon(a, b, method="exact")
    assert "exact" in mine.test
    assert mine.statistic == pytest.approx(float(ref.statistic))
    assert mine.pvalue == pytest.approx(float(ref.pvalue), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wilcoxon_with_ties_and_zeros_matches_scipy_normal_approximation(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, size=40).astype(float)
    b = rng.integers(0, 5, size=40).astype(float)
    mine = stats.wilcoxon_signed_rank(a, b)
    ref = ss.wilcoxon(a, b, method="asymptotic", zero_method="wilcox", correction=False)
    assert "normal" in mine.test
    assert mine.n == int(np.sum(a != b))
    assert mine.statistic == pytest.approx(float(ref.statistic))
    assert mine.pvalue == pytest.approx(float(ref.pvalue), rel=1e-9)


def test_rank_biserial_closed_form():
    # d = (1, 2, -3): ranks 1, 2, 3; W+ = 3, W- = 3 -> r = 0; d = (1, 2, 3): r = 1
    assert stats.wilcoxon_signed_rank([1, 2, -3], [0, 0, 0]).effect == pytest.approx(0.0)
    assert stats.wilcoxon_signed_rank([1, 2, 3], [0, 0, 0]).effect == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mcnemar_exact_matches_scipy_binomial_test(seed):
    rng = np.random.default_rng(seed)
    before = rng.random(60) < 0.8
    after = np.where(before, rng.random(60) < 0.6, rng.random(60) < 0.2)
    mine = stats.mcnemar_exact(before, after)
    b, c = int(np.sum(before & ~after)), int(np.sum(~before & after))
    assert mine.pvalue == pytest.approx(float(ss.binomtest(b, b + c, 0.5).pvalue), rel=1e-9)
    assert mine.effect == pytest.approx((b - c) / 60)


def test_mcnemar_closed_form():
    # b = 5 lost, c = 0 gained: p = 2 * 0.5**5 = 0.0625; nothing discordant -> p = 1
    before = [True] * 8 + [False] * 2
    after = [False] * 5 + [True] * 3 + [False] * 2
    m = stats.mcnemar_exact(before, after)
    assert m.pvalue == pytest.approx(0.0625) and m.effect == pytest.approx(0.5)
    assert stats.mcnemar_exact([True, False], [True, False]).pvalue == 1.0


def test_binom_cdf_matches_scipy():
    for n in (1, 7, 30):
        for k in range(n + 1):
            assert stats.binom_cdf(k, n) == pytest.approx(float(ss.binom.cdf(k, n, 0.5)), rel=1e-12, abs=1e-15)


def test_bootstrap_ci_is_seeded_and_agrees_with_scipy_percentile():
    rng = np.random.default_rng(7)
    x = rng.normal(1.0, 2.0, size=80)
    lo, hi = stats.bootstrap_ci(x, n_resamples=20000, seed=3)
    assert (lo, hi) == stats.bootstrap_ci(x, n_resamples=20000, seed=3)
    assert lo < float(np.mean(x)) < hi
    ref = ss.bootstrap((x,), np.mean, method="percentile", n_resamples=20000, rng=np.random.default_rng(3))
    half = (hi - lo) / 2
    assert lo == pytest.approx(float(ref.confidence_interval.low), abs=0.05 * half)
    assert hi == pytest.approx(float(ref.confidence_interval.high), abs=0.05 * half)
    # and the normal-theory width: 2 * 1.96 * sd / sqrt(n)
    assert hi - lo == pytest.approx(2 * 1.96 * np.std(x, ddof=1) / math.sqrt(80), rel=0.1)


@pytest.mark.parametrize("seed", [0, 1])
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 8, size=30).astype(float)
    y = x + rng.normal(size=30)
    rho, p = stats.spearman(x, y)
    ref = ss.spearmanr(x, y)
    assert rho == pytest.approx(float(ref.statistic), rel=1e-10)
    assert p == pytest.approx(float(ref.pvalue), rel=1e-8)


def test_rankdata_matches_scipy():
    x = [3.0, 1.0, 3.0, 2.0, 3.0, 0.5]
    np.testing.assert_allclose(stats.rankdata(x), ss.rankdata(x))


def test_relative_decrease_and_matching():
    assert stats.relative_decrease(0.8, 0.2) == pytest.approx(75.0)
    assert math.isnan(stats.relative_decrease(0.0, 0.1))
    before = {"a": {"efficacy": 1.0}, "b": {"efficacy": 1.0}, "c": {"efficacy": 0.0}}
    after = {"a": {"efficacy": 0.0}, "b": {"efficacy": 1.0}, "c": {"efficacy": 1.0}}
    assert stats.survived(before, after, "efficacy") == {"a": False, "b": True}
    with pytest.raises(stats.DataError, match="no case_id"):
        stats.matched({"x": {"efficacy": 1.0}}, {"y": {"efficacy": 1.0}}, "efficacy")


def test_mcnemar_with_thousands_of_discordant_pairs_matches_scipy():
    # a float sum of C(n, i) / 2^n overflowed past ~1,030 discordant pairs; the integer sum works for any n
    before = [True] * 700 + [False] * 600 + [True] * 50
    after = [False] * 700 + [True] * 600 + [True] * 50
    m = stats.mcnemar_exact(before, after)
    assert m.pvalue == pytest.approx(float(ss.binomtest(600, 1300, 0.5).pvalue), rel=1e-9)
    assert stats.binom_cdf(3, 10, 0.3) == pytest.approx(float(ss.binom.cdf(3, 10, 0.3)), rel=1e-12)


def test_decay_counts_rates_and_survival_indicators():
    d = stats.decay([1.0, 1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0, 1.0])
    assert (d.succeeded_before, d.failed_before, d.flipped, d.emerged) == (4, 1, 2, 1)
    assert d.efr == 0.5 and d.emergent == 1.0 and d.survival == 0.5
    assert list(d.survived) == [1.0, 0.0, 1.0, 0.0]
    assert d.relative_decrease == pytest.approx((0.8 - 0.6) / 0.8 * 100)
    assert stats.decay([0.0], [1.0]).efr is None and stats.decay([0.0], [0.0]).relative_decrease is None
