"""The side-by-side table: the study's published numbers beside the same quantities computed from a store.

Each "here" cell is checked against a hand computation on a small in-memory grid with known ES values, and the
verdict column against the findings it quotes.
"""

from __future__ import annotations

import re

from editdecay.report.findings import NO_DATA, all_findings
from editdecay.report.load import Results, Run
from editdecay.report.published import (
    PUBLISHED,
    decay_here,
    hotpotqa_here,
    method_here,
    non_edited_here,
    selective_here,
    side_by_side_table,
)

N = 10  # edits per run


def _grid() -> Results:
    """MEMIT/AlphaEdit x full/LoRA x all/edited/non-edited on commonsense, plus LoRA/all on HotpotQA, seed 0.

    ES before fine-tuning is 1.0 for every edit; after it, the number of edits that survive is set per run (below),
    and each edit's ES magnitude falls from 0.9 by a known amount.
    """
    survive = {("memit", "full", "all", "commonsense"): 8, ("memit", "lora", "all", "commonsense"): 9,
               ("alphaedit", "full", "all", "commonsense"): 6, ("alphaedit", "lora", "all", "commonsense"): 5,
               ("memit", "full", "edited", "commonsense"): 3, ("memit", "lora", "edited", "commonsense"): 4,
               ("alphaedit", "full", "edited", "commonsense"): 2, ("alphaedit", "lora", "edited", "commonsense"): 1,
               ("memit", "full", "non-edited", "commonsense"): 7, ("memit", "lora", "non-edited", "commonsense"): 6,
               ("alphaedit", "full", "non-edited", "commonsense"): 5, ("alphaedit", "lora", "non-edited", "commonsense"): 4,
               ("memit", "lora", "all", "hotpotqa"): 7, ("alphaedit", "lora", "all", "hotpotqa"): 2}
    res = Results(path="mem", runs=[], stages={}, groups={}, metrics={}, record_metrics={}, downstream={},
                  trajectories={})
    for i, ((method, ft, layers, ft_data), kept) in enumerate(survive.items()):
        run = Run(f"r{i}", "smollm2-135m", method, "counterfact", 100, ft, layers, "attn,mlp", ft_data, 0, "done")
        res.runs.append(run)
        before, after = f"ed-{method}", f"ft-{i}"
        res.groups[run.run_id] = {"M_ed": before, "M_ed_ft": after}
        res.record_metrics[before] = {f"c{k}": {"efficacy": 1.0, "efficacy_magnitude": 0.9} for k in range(N)}
        res.record_metrics[after] = {f"c{k}": {"efficacy": float(k < kept), "efficacy_magnitude": 0.9 - 0.01 * (N - kept)}
                                     for k in range(N)}
        res.downstream[after] = {"boolq": (0.5 + 0.01 * kept, 100), "piqa": (0.6, 100)}
    return res


def test_decay_cell_is_the_mean_relative_es_decrease_per_fine_tuning_type():
    text = decay_here(_grid())
    # all-layer runs only: full (8, 6 kept of 10) and LoRA (9, 5; 7, 2 on HotpotQA), relative to ES 1.0
    assert "full 30.00% (2 runs; ES magnitude −3.0 points)" in text
    lora = re.search(r"LoRA ([\d.]+)% \(4 runs; ES magnitude −([\d.]+) points\)", text)
    assert lora and float(lora[1]) == (10 + 50 + 30 + 80) / 4
    assert abs(float(lora[2]) - (1 + 5 + 3 + 8) / 4) <= 0.05  # 4.25, printed to one decimal
    assert "DoRA" not in text  # no DoRA run: not reported as 0


def test_method_cell_quotes_the_paired_runs_es_points():
    text = method_here(_grid())
    # LoRA, all layers, 100 edits, both fine-tuning data: AlphaEdit (50, 80) vs MEMIT (10, 30)
    assert text.startswith("LoRA, all layers, 100 edits: 65.0 (AlphaEdit) vs 20.0 (MEMIT) ES points lost over 2 run pairs")
    assert "every fine-tune: " in text and "over 7 run pairs" in text


def test_selective_cell_gives_es_and_downstream_per_selection():
    text = selective_here(_grid())
    assert "AlphaEdit, LoRA: ES 100 edited → 50 all / 10 edited / 40 non-edited; downstream 57.5 / 55.5 / 57.0" in text
    assert text.index("AlphaEdit, full") < text.index("MEMIT, full")  # the study's method first


def test_non_edited_and_hotpotqa_cells():
    res = _grid()
    # non-edited vs all, paired over method x ft type: (30+40+50+60)/4 vs (20+10+40+50)/4
    assert "45.0 (non-edited only) vs 30.0 (all layers) ES points lost over 4 run pairs" in non_edited_here(res)
    assert "55.0 (HotpotQA) vs 30.0 (commonsense) ES points lost over 2 run pairs" in hotpotqa_here(res)
    assert "ES magnitude −5.5 vs −3.0 points" in hotpotqa_here(res)


def test_unfinished_pairs_are_named_not_counted_as_zero():
    res = _grid()
    for run in res.runs:
        if run.ft_data == "hotpotqa":
            del res.groups[run.run_id]["M_ed_ft"]
    assert "no finished HotpotQA run paired with a finished commonsense run (2 pairs in the store)" in hotpotqa_here(res)


def test_table_has_one_row_per_claim_with_the_findings_verdicts():
    res = _grid()
    findings = all_findings(res)
    table = side_by_side_table(res, findings)
    assert [row["claim"] for row in table.rows] == [f.claim for f in findings] == [p.claim for p in PUBLISHED]
    for row, f in zip(table.rows, findings, strict=True):
        assert row["verdict"] == f"{f.verdict}; on ES magnitude: {f.margin_verdict}"
    # the planted effects: decay (binary) and HotpotQA > commonsense (magnitude) hold
    assert findings[0].verdict == "supported"
    assert findings[-1].margin_verdict == "supported" and findings[-1].verdict != NO_DATA
    assert "38.10%" in table.rows[0]["study"] and "35.37" in table.rows[1]["study"]


def test_text_report_prints_the_side_by_side_cells_whole(tmp_path):
    from helpers.store import build_store

    from editdecay.report.api import report_text

    text = report_text(build_store(tmp_path / "s.db", seeds=(0,)))
    block = text[text.index("== Side by side with the study =="):]
    assert "    the study: mean relative ES decrease: full 38.10%, LoRA 28.71%, DoRA 29.88%" in block
    assert "    here: mean relative ES decrease over all-layer runs: full " in block and "DoRA" in block.split("\n")[3]


def test_a_margin_gain_is_printed_as_a_gain():
    """Where fine-tuning raises the ES magnitude (re-editing can), the cell says +, never "−-"."""
    res = _grid()
    for run in res.runs:
        if run.ft_type == "full" and run.layer_selection == "all":
            for values in res.record_metrics[res.groups[run.run_id]["M_ed_ft"]].values():
                values["efficacy_magnitude"] = 0.95
    assert "full 30.00% (2 runs; ES magnitude +5.0 points)" in decay_here(res)
