"""The preserve comparison table comes from a results store: strategy read from the fine-tuning stage's
config, EFR and survival counted from the stored per-record metrics, downstream difference against plain FT."""

from __future__ import annotations

import json
import sqlite3

import pytest
from helpers.store import SCHEMA

from editdecay.report.load import load_results
from editdecay.report.tables import all_tables, preserve_table

# per strategy: how many of the 8 edits that held (of 10) still hold after fine-tuning, and the downstream score
PLANTED = {"none": (4, 0.60), "freeze": (6, 0.59), "reedit": (8, 0.605)}
SECONDS = {"none": 100.0, "freeze": 90.0, "reedit": 130.0}  # the M_ed_ft fine-tune stage's compute time


def _store(path, strategies=PLANTED):
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    cases = [f"c{i}" for i in range(10)]

    def evaluation(sid, efficacy, downstream):
        conn.execute("INSERT INTO stages (stage_id, kind, status, config_json) VALUES (?,?,?,?)",
                     (sid, "evaluate", "done", "{}"))
        for case, value in zip(cases, efficacy, strict=True):
            conn.execute("INSERT INTO record_metrics VALUES (?,?,?,?)", (sid, case, "efficacy", value))
            # a per-edit ES magnitude that tracks success: 0.9 for an edit that holds, -0.1 for one that does not
            conn.execute("INSERT INTO record_metrics VALUES (?,?,?,?)",
                         (sid, case, "efficacy_magnitude", 0.9 if value else -0.1))
        conn.execute("INSERT INTO metrics VALUES (?,?,?)", (sid, "efficacy", sum(efficacy) / len(efficacy)))
        conn.execute("INSERT INTO downstream VALUES (?,?,?,?)", (sid, "piqa", downstream, 50))
        return sid

    before = [1.0] * 8 + [0.0] * 2
    ed = evaluation("eval-ed", before, 0.61)
    for i, (strategy, (kept, down)) in enumerate(strategies.items()):
        run = f"run{i}"
        ft_stage = f"ft-{strategy}"
        conn.execute("INSERT INTO stages (stage_id, kind, status, config_json, seconds) VALUES (?,?,?,?,?)",
                     (ft_stage, "finetune", "done", json.dumps({"finetune": {"type": "lora",
                                                                            "preserve_strategy": strategy}}),
                      SECONDS.get(strategy)))
        after = evaluation(f"eval-{strategy}", [1.0] * kept + [0.0] * (10 - kept), down)
        conn.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                     (run, "g", "smollm2-135m", "memit", "counterfact", 10, "lora", "all", "attn,mlp", "commonsense",
                      0, "{}", "done", 0.0))
        for grp, sid in (("M_ed", ed), ("M_ed_ft", after)):
            conn.execute("INSERT INTO run_groups VALUES (?,?,?)", (run, grp, sid))
        conn.execute("INSERT INTO run_stages VALUES (?,?,?)", (run, ft_stage, "finetune_edit"))
    conn.commit()
    conn.close()
    return path


def test_preserve_table_from_a_store(tmp_path):
    res = load_results(_store(tmp_path / "s.db"))
    table = preserve_table(res)
    rows = {r["preserve"]: r for r in table.rows}
    assert list(rows) == ["none", "freeze", "reedit"]
    for strategy, (kept, down) in PLANTED.items():
        row = rows[strategy]
        assert row["n_ok"] == 8 and row["es_before"] == pytest.approx(0.8)
        assert row["efr"] == pytest.approx((8 - kept) / 8) and row["survival"] == pytest.approx(kept / 8)
        assert row["downstream_delta"] == pytest.approx(100 * (down - 0.60))
        # magnitude: 8 holding edits at 0.9 and 2 at -0.1 before; `kept` at 0.9 and the rest at -0.1 after
        assert row["mag_after"] == pytest.approx((0.9 * kept - 0.1 * (10 - kept)) / 10)
        assert row["mag_delta"] == pytest.approx(100 * (kept - 8) / 10)
        assert row["ft_seconds"] == SECONDS[strategy]
        assert row["compute_ratio"] == pytest.approx(SECONDS[strategy] / SECONDS["none"])
    assert "preserve" in [t.name for t in all_tables(res)]


def _store_changed_by(path, sql: str):
    """The planted store with one UPDATE applied."""
    conn = sqlite3.connect(_store(path))
    conn.execute(sql)
    conn.commit()
    conn.close()
    return path


def test_preserve_table_without_stage_times_leaves_compute_empty(tmp_path):
    """A store whose stages were not timed shows no compute rather than a made-up one."""
    path = _store_changed_by(tmp_path / "s.db", "UPDATE stages SET seconds = NULL")
    rows = preserve_table(load_results(path)).rows
    assert rows and all(r["ft_seconds"] is None and r["compute_ratio"] is None for r in rows)


def test_a_failed_fine_tune_has_no_compute(tmp_path):
    """A failed attempt's seconds (the time until it failed) are not the strategy's cost."""
    path = _store_changed_by(tmp_path / "s.db",
                             "UPDATE stages SET status = 'failed', seconds = 0.3 WHERE stage_id = 'ft-reedit'")
    rows = {r["preserve"]: r for r in preserve_table(load_results(path)).rows}
    assert rows["reedit"]["ft_seconds"] is None and rows["reedit"]["compute_ratio"] is None
    assert rows["freeze"]["compute_ratio"] == pytest.approx(0.9)


def test_strategies_are_configurations_not_seeds_in_every_table(tmp_path):
    """Runs that differ only by strategy are three configurations (one seed each), never pooled as seeds."""
    res = load_results(_store(tmp_path / "s.db"))
    assert sorted(r.preserve for r in res.runs) == sorted(PLANTED)
    (metrics,) = [t for t in all_tables(res) if t.name == "edit_metrics"]
    assert sorted(r["preserve"] for r in metrics.rows) == sorted(PLANTED)
    assert all(r["seeds"] == 1 for r in metrics.rows)
    by = {r["preserve"]: r["efficacy_M_ed_ft"] for r in metrics.rows}
    assert by == {s: pytest.approx(kept / 10) for s, (kept, _) in PLANTED.items()}


def test_no_preserve_runs_no_table(tmp_path):
    res = load_results(_store(tmp_path / "s.db", {"none": (4, 0.6)}))
    assert preserve_table(res).rows == [] and "preserve" not in [t.name for t in all_tables(res)]
