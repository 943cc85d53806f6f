"""decay.py on hand-made evaluations: EFR, relative decrease, emergent, survival + bootstrap CI, paired tests."""

from __future__ import annotations

import math

import numpy as np
import pytest

from editdecay.errors import DataError
from editdecay.evaluate.decay import compare, mcnemar, paired_test, seed_comparison
from editdecay.stats import bootstrap_ci


def ev(efficacy, paraphrase=None, ids=None):
    ids = ids or [str(i) for i in range(len(efficacy))]
    rows = []
    for k, cid in enumerate(ids):
        row = {"case_id": cid, "efficacy": efficacy[k]}
        if paraphrase is not None:
            row["paraphrase"] = paraphrase[k]
        rows.append(row)
    return {"records": rows}


def test_compare_hand_computed():
    # before: 4 of 5 succeed; after: 2 of those 4 flip, the failing one emerges
    before = ev([1, 1, 1, 1, 0], paraphrase=[1.0, 0.5, 1.0, 0.0, 0.0])
    after = ev([1, 0, 1, 0, 1], paraphrase=[0.0, 1.0, 1.0, 0.0, 0.0])
    c = compare(before, after, n_boot=200)
    assert c["efr"]["efficacy"] == 2 / 4
    assert c["emergent"]["efficacy"] == 1 / 1
    assert c["relative_decrease"]["efficacy"] == pytest.approx((0.8 - 0.6) / 0.8 * 100)
    assert c["survival"]["efficacy"]["rate"] == 2 / 4
    assert c["survival"]["efficacy"]["n"] == 4
    # paraphrase: success is > 0.5, so 0.5 counts as failed: before succ = {0, 2}; after succ = {1, 2}
    assert c["efr"]["paraphrase"] == 1 / 2
    assert c["emergent"]["paraphrase"] == 1 / 3
    assert c["relative_decrease"]["paraphrase"] == pytest.approx((0.5 - 0.4) / 0.5 * 100)
    assert c["counts"]["efficacy"] == {"n": 5, "succeeded_before": 4, "failed_before": 1, "flipped": 2, "emerged": 1}
    assert set(c["efr"]) == {"efficacy", "paraphrase"}


def test_records_are_matched_by_case_id_not_position():
    before = ev([1, 0, 1], ids=["a", "b", "c"])
    after = ev([1, 1, 0], ids=["c", "b", "a"])  # a: 1 -> 0, b: 0 -> 1, c: 1 -> 1
    c = compare(before, after, n_boot=100)
    assert c["efr"]["efficacy"] == 1 / 2 and c["emergent"]["efficacy"] == 1.0


def test_different_record_sets_are_a_clear_error():
    with pytest.raises(DataError, match="different records.*only in before.*'c'"):
        compare(ev([1, 1, 1], ids=["a", "b", "c"]), ev([1, 1], ids=["a", "b"]))
    with pytest.raises(DataError, match="duplicate case_id 'a'"):
        compare(ev([1, 1], ids=["a", "a"]), ev([1, 1], ids=["a", "b"]))


def test_undefined_ratios_are_none():
    c = compare(ev([0, 0]), ev([0, 1]), n_boot=50)
    assert c["efr"]["efficacy"] is None and c["survival"]["efficacy"]["rate"] is None
    assert c["relative_decrease"]["efficacy"] is None
    assert c["emergent"]["efficacy"] == 0.5


def test_survival_bootstrap_ci_is_seeded_and_brackets_rate():
    rng = np.random.default_rng(1)
    before = ev([1] * 200)
    after = ev(list((rng.random(200) < 0.7).astype(int)))
    c1 = compare(before, after, seed=3)
    c2 = compare(before, after, seed=3)
    s = c1["survival"]["efficacy"]
    assert s == c2["survival"]["efficacy"]
    assert s["ci_low"] < s["rate"] < s["ci_high"]
    # normal-approximation width of a proportion: 2 * 1.96 * sqrt(p(1-p)/n)
    width = 2 * 1.96 * math.sqrt(s["rate"] * (1 - s["rate"]) / 200)
    assert s["ci_high"] - s["ci_low"] == pytest.approx(width, rel=0.25)


def test_bootstrap_of_constant_is_degenerate():
    assert bootstrap_ci([1.0, 1.0, 1.0], n_boot=100) == (1.0, 1.0)


def test_mcnemar_exact_closed_form():
    before = [True] * 5 + [False] * 3
    after = [False] * 5 + [False] * 3  # 5 lost, 0 gained: p = 2 * 0.5^5
    r = mcnemar(before, after)
    assert (r["lost"], r["gained"]) == (5, 0)
    assert r["p_value"] == pytest.approx(2 * 0.5 ** 5)
    assert mcnemar([True], [True])["p_value"] == 1.0


def test_paired_t_test_closed_form_and_seed_comparison():
    r = paired_test([3.0, 5.0, 7.0], [2.0, 3.0, 4.0])  # differences 1, 2, 3: t = 2 / (1 / sqrt(3))
    assert r["statistic"] == pytest.approx(2 * math.sqrt(3))
    assert r["mean_diff"] == pytest.approx(2.0)
    seeds = [(ev([1, 1, 1, 1]), ev([1, 1, 0, 0])), (ev([1, 1, 1, 0]), ev([1, 0, 0, 0])),
             (ev([1, 1, 0, 0]), ev([1, 0, 0, 0]))]
    s = seed_comparison(seeds, "efficacy")
    assert s["before"] == [1.0, 0.75, 0.5] and s["after"] == [0.5, 0.25, 0.25]
    assert s["n"] == 3
    w = paired_test([1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.5, 1.0, 1.5, 2.0], test="wilcoxon")
    assert w["p_value"] == pytest.approx(2 / 2 ** 5)  # all 5 differences positive: exact two-sided p


def test_cli_compare_writes_all_four_keyed_by_metric(tmp_path, capsys):
    import json

    from editdecay.cli import main

    before, after, out = tmp_path / "b.json", tmp_path / "a.json", tmp_path / "c.json"
    before.write_text(json.dumps(ev([1, 1, 1, 0], paraphrase=[1, 1, 0, 0])))
    after.write_text(json.dumps(ev([1, 0, 1, 1], paraphrase=[1, 0, 0, 0])))
    assert main(["compare", str(before), str(after), "--out", str(out), "--n-boot", "100"]) == 0
    c = json.loads(out.read_text())
    assert c["efr"] == {"efficacy": 1 / 3, "paraphrase": 1 / 2}
    assert c["emergent"] == {"efficacy": 1.0, "paraphrase": 0.0}
    assert c["relative_decrease"]["paraphrase"] == pytest.approx(50.0)
    assert c["survival"]["efficacy"]["rate"] == pytest.approx(2 / 3)
    assert "efficacy" in capsys.readouterr().out
    other = tmp_path / "o.json"
    other.write_text(json.dumps(ev([1, 1], ids=["x", "y"])))
    assert main(["compare", str(before), str(other)]) == 1
    assert "different records" in capsys.readouterr().err
    assert main(["compare", str(before), str(tmp_path / "missing.json")]) == 1
    assert "missing.json: file not found" in capsys.readouterr().err
