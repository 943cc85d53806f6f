"""Reports from a small stored grid: every table present with the right rows, numbers equal to the store's,
findings with their statistics, figures (including the per-layer weight picture from real artifact folders),
escaping, the CLI contract and clear errors for bad stores.

The store is built by tests/helpers/store.py with the schema of docs/design.md by plain SQL (2 models x 2 methods
x 3 fine-tuning types x 3 layer selections x 2 seeds, 20 records per evaluation), so these tests do not depend
on the experiment package.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.store import (
    FT_TYPES,
    LAYERS,
    METHODS,
    MODELS,
    N_RECORDS,
    XSS,
    analyze_store,
    build_store,
    make_artifacts,
    write_corpus,
)


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory, tiny_tok):
    folder = tmp_path_factory.mktemp("report_store")
    corpus = write_corpus(folder / "ft.jsonl")
    arts = make_artifacts(folder, tiny_tok)
    return analyze_store(build_store(folder / "results.db", ft_data=str(corpus),
                                     artifacts={("smollm2-135m", "memit", 0): arts})), arts


@pytest.fixture(scope="module")
def written(grid_store, tmp_path_factory):
    from editdecay.report.api import write_report

    out = tmp_path_factory.mktemp("report_out") / "rep"
    return out, write_report(grid_store[0], out)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def sql(store: Path, query: str, *args) -> list[tuple]:
    conn = sqlite3.connect(store)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


def test_every_table_present_with_the_right_rows(written):
    out, paths = written
    expected_rows = {
        "findings": 5,
        "side_by_side": 5,
        "edit_metrics": len(MODELS) * len(METHODS) * len(FT_TYPES) * len(LAYERS),
        "relative_decrease_by_ft_type": len(FT_TYPES),
        "relative_decrease_by_model": len(MODELS),
        "efr": len(MODELS) * len(METHODS) * len(FT_TYPES) * len(LAYERS),
        "categories": len(MODELS) * len(METHODS) * len(FT_TYPES) * len(LAYERS),
        # base, edited, and one row per layer selection, for each config other than layers
        "selective_layers": len(MODELS) * len(METHODS) * len(FT_TYPES) * (2 + len(LAYERS)),
        "downstream": len(MODELS) * len(METHODS) * len(FT_TYPES) * len(LAYERS),
        "decay_tests": len(MODELS) * len(METHODS) * len(FT_TYPES) * len(LAYERS),
        "edits": N_RECORDS,
    }
    for name, n in expected_rows.items():
        csv_path, tex_path = out / "tables" / f"{name}.csv", out / "tables" / f"{name}.tex"
        assert csv_path.exists() and tex_path.exists(), name
        assert len(read_csv(csv_path)) == n, name
        assert tex_path.read_text().count(r" \\") == n + 1, name  # header + rows
    assert {Path(p).stem for p in paths["tables"]} == set(expected_rows)
    assert (out / "report.html").exists() and (out / "report.md").exists()
    sel = read_csv(out / "tables" / "selective_layers.csv")
    first = [r["condition"] for r in sel[:5]]
    assert first == ["base (M)", "edited (M_ed)", "fine-tuned, all layers", "fine-tuned, edited layers only",
                     "fine-tuned, non-edited layers only"]
    assert sorted(r["ft_type"] for r in read_csv(out / "tables" / "relative_decrease_by_ft_type.csv")) == sorted(FT_TYPES)


def test_edit_metric_numbers_equal_the_store(written, grid_store):
    out, _ = written
    store = grid_store[0]
    rows = read_csv(out / "tables" / "edit_metrics.csv")
    for row in rows:
        for metric in ("efficacy", "paraphrase", "neighborhood"):
            for grp in ("M_ed", "M_ed_ft"):
                values = [v for (v,) in sql(store, """
                    SELECT m.value FROM runs r JOIN run_groups g ON g.run_id = r.run_id
                    JOIN metrics m ON m.eval_stage_id = g.eval_stage_id
                    WHERE r.model=? AND r.method=? AND r.ft_type=? AND r.layers=? AND g.grp=? AND m.metric=?""",
                    row["model"], row["method"], row["ft_type"], row["layers"], grp, metric)]
                assert len(values) == 2  # two seeds
                assert float(row[f"{metric}_{grp}"]) == pytest.approx(float(np.mean(values)), abs=1e-12)
        assert row["seeds"] == "2"


def test_score_and_categories_equal_a_hand_count_from_the_store(written, grid_store):
    """Score = harmonic mean of ES, PS, NS per run; categories = shares of stable/erased/emergent/impossible."""
    out, _ = written
    store = grid_store[0]
    metrics_row = read_csv(out / "tables" / "edit_metrics.csv")[0]
    cat_row = read_csv(out / "tables" / "categories.csv")[0]
    assert (cat_row["model"], cat_row["method"], cat_row["ft_type"], cat_row["layers"]) == \
        (metrics_row["model"], metrics_row["method"], metrics_row["ft_type"], metrics_row["layers"])
    scores, shares = [], {c: [] for c in ("stable", "erased", "emergent", "impossible")}
    for (run_id,) in sql(store, "SELECT run_id FROM runs WHERE model=? AND method=? AND ft_type=? AND layers=?",
                         cat_row["model"], cat_row["method"], cat_row["ft_type"], cat_row["layers"]):
        summary = dict(sql(store, "SELECT m.metric, m.value FROM run_groups g JOIN metrics m ON "
                                  "m.eval_stage_id = g.eval_stage_id WHERE g.run_id=? AND g.grp='M_ed'", run_id))
        es, ps, ns = summary["efficacy"], summary["paraphrase"], summary["neighborhood"]
        scores.append(0.0 if min(es, ps, ns) == 0 else 3 / (1 / es + 1 / ps + 1 / ns))

        def per(grp, run_id=run_id):
            return dict(sql(store, "SELECT rm.case_id, rm.value FROM run_groups g JOIN record_metrics rm ON "
                                   "rm.eval_stage_id = g.eval_stage_id WHERE g.run_id=? AND g.grp=? AND "
                                   "rm.metric='efficacy'", run_id, grp))
        before, after = per("M_ed"), per("M_ed_ft")
        pairs = [(before[c] > 0.5, after[c] > 0.5) for c in before if c in after]
        for name, want in (("stable", (True, True)), ("erased", (True, False)), ("emergent", (False, True)),
                           ("impossible", (False, False))):
            shares[name].append(sum(p == want for p in pairs) / len(pairs))
    assert float(metrics_row["score_M_ed"]) == pytest.approx(float(np.mean(scores)), abs=1e-12)
    for name, values in shares.items():
        assert float(cat_row[name]) == pytest.approx(float(np.mean(values)), abs=1e-12)
    assert sum(float(cat_row[c]) for c in shares) == pytest.approx(1.0)


def test_efr_and_emergent_equal_a_hand_count_from_record_metrics(written, grid_store):
    out, _ = written
    store = grid_store[0]
    row = read_csv(out / "tables" / "efr.csv")[0]
    efrs, emergents, indicators = [], [], []
    for (run_id,) in sql(store, "SELECT run_id FROM runs WHERE model=? AND method=? AND ft_type=? AND layers=?",
                         row["model"], row["method"], row["ft_type"], row["layers"]):
        def per(grp, run_id=run_id):
            return dict(sql(store, """SELECT rm.case_id, rm.value FROM run_groups g JOIN record_metrics rm
                ON rm.eval_stage_id = g.eval_stage_id WHERE g.run_id=? AND g.grp=? AND rm.metric='efficacy'""",
                            run_id, grp))
        before, after = per("M_ed"), per("M_ed_ft")
        ok = [c for c in before if before[c] > 0.5]
        bad = [c for c in before if before[c] <= 0.5]
        efrs.append(sum(after[c] <= 0.5 for c in ok) / len(ok))
        emergents.append(sum(after[c] > 0.5 for c in bad) / len(bad) if bad else math.nan)
        indicators += [float(after[c] > 0.5) for c in ok]
    assert float(row["efr_efficacy"]) == pytest.approx(np.mean(efrs))
    if row["emergent_efficacy"]:
        assert float(row["emergent_efficacy"]) == pytest.approx(np.nanmean(emergents))
    assert float(row["survival"]) == pytest.approx(np.mean(indicators))
    assert float(row["survival_lo"]) <= float(row["survival"]) <= float(row["survival_hi"])


def test_selective_table_downstream_is_the_task_mean(written, grid_store):
    out, _ = written
    store = grid_store[0]
    row = [r for r in read_csv(out / "tables" / "selective_layers.csv")
           if r["condition"] == "fine-tuned, non-edited layers only"][0]
    values = [v for (v,) in sql(store, """
        SELECT AVG(d.accuracy) FROM runs r JOIN run_groups g ON g.run_id = r.run_id JOIN downstream d
        ON d.eval_stage_id = g.eval_stage_id WHERE r.model=? AND r.method=? AND r.ft_type=? AND r.layers='non-edited'
        AND g.grp='M_ed_ft' GROUP BY r.run_id""", row["model"], row["method"], row["ft_type"])]
    assert float(row["downstream"]) == pytest.approx(np.mean(values))


def test_findings_follow_the_planted_effects(written):
    out, _ = written
    findings = json.loads((out / "findings.json").read_text())
    verdicts = [f["verdict"] for f in findings]
    # the synthetic grid plants: decay, AlphaEdit decays more, edited-only removes most, non-edited > all; it
    # fine-tunes on one data set only, so the HotpotQA claim has no pairs
    assert verdicts == ["supported"] * 4 + ["not enough data"]
    for f in findings[:4]:
        assert f["tests"] and all(0 <= t["pvalue"] <= 1 for t in f["tests"])
        assert "p = " in f["evidence"]


def test_findings_say_not_enough_data_when_a_factor_is_missing(tmp_path):
    from editdecay.report.findings import all_findings
    from editdecay.report.load import load_results

    # only MEMIT, only full-layer fine-tuning: the method and layer claims cannot be judged
    store = build_store(tmp_path / "a.db", seeds=(0,), models=MODELS[:1], methods=("memit",), ft_types=("lora",),
                        layers=("all",))
    f = all_findings(load_results(store))
    assert f[0].verdict == "supported" and f[0].tests[0].test.startswith("McNemar")  # one run: per-edit test
    assert [x.verdict for x in f[1:]] == ["not enough data"] * 4


def test_edits_decay_reports_the_es_magnitude_drop_beside_the_verdict(tmp_path):
    """When per-edit ES magnitudes are stored, the decay finding adds a Wilcoxon test on them (and its mean
    drop), without changing the verdict, which rests on binary success."""
    from editdecay.report.findings import all_findings
    from editdecay.report.load import load_results

    store = build_store(tmp_path / "m.db", seeds=(0,), models=MODELS[:1], methods=("memit",), ft_types=("lora",),
                        layers=("all",))
    plain = all_findings(load_results(store))[0]
    conn = sqlite3.connect(store)
    (ed, ft), = conn.execute("SELECT MAX(CASE WHEN grp='M_ed' THEN eval_stage_id END), "
                             "MAX(CASE WHEN grp='M_ed_ft' THEN eval_stage_id END) FROM run_groups").fetchall()
    drops = [0.01 * (i + 1) for i in range(N_RECORDS)]  # every edit loses margin, by known amounts
    for i, d in enumerate(drops):
        conn.execute("INSERT INTO record_metrics VALUES (?,?,?,?)", (ed, f"cf{i}", "efficacy_magnitude", 0.9))
        conn.execute("INSERT INTO record_metrics VALUES (?,?,?,?)", (ft, f"cf{i}", "efficacy_magnitude", 0.9 - d))
    conn.commit()
    conn.close()
    f = all_findings(load_results(store))[0]
    assert f.verdict == plain.verdict and f.tests[0].test == plain.tests[0].test
    wilcoxon = f.tests[-1]
    assert wilcoxon.test.startswith("Wilcoxon") and wilcoxon.n == N_RECORDS and wilcoxon.pvalue < 0.001
    assert f"{100 * sum(drops) / N_RECORDS:.1f} points lower" in f.evidence


def test_reversed_claim_is_not_supported(grid_store):
    from editdecay.report.findings import compare_conditions
    from editdecay.report.load import load_results

    res = load_results(grid_store[0])
    # MEMIT edits survive better than AlphaEdit's in this grid, so "MEMIT decays more" must not be supported
    f = compare_conditions(res, "MEMIT decays more", "method", "memit", "alphaedit")
    assert f.verdict == "not supported"
    assert f.tests[0].mean_diff < 0


def test_html_escapes_data_and_is_self_contained(written):
    out, _ = written
    text = (out / "report.html").read_text()
    assert XSS not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script" not in text.lower()
    assert "http://" not in text and "https://" not in text  # no external resources
    assert text.count("data:image/png;base64,") == 5  # heatmap, trajectories, trade-off, frequency, layers
    md = (out / "report.md").read_text()
    assert XSS not in md and r"\<script>alert(1)\</script>" in md  # escaped only where Markdown needs it
    assert "\\-" not in md and "\\." not in md and "fine-tuning" in md  # reads cleanly as plain text
    tex = (out / "tables" / "edits.tex").read_text()
    assert r"\textless{}script\textgreater{}" in tex and r"Subject\_4 \& co" in tex
    assert XSS in (out / "tables" / "edits.csv").read_text()  # CSV keeps the raw data


def test_layer_change_matches_hand_computation(grid_store):
    import torch
    from safetensors.torch import load_file

    from editdecay.analyze.weights import layer_change

    arts = grid_store[1]
    ft_change, edit_change, edited = layer_change(Path(arts["edit"]), Path(arts["ft"]))
    assert edited == [1, 2] and sorted(edit_change) == [1, 2]
    w_in, w_ft = load_file(f"{arts['edit']}/model.safetensors"), load_file(f"{arts['ft']}/model.safetensors")
    keys = [k for k in w_in if k.startswith("model.layers.3.")]
    num = sum(float((w_ft[k] - w_in[k]).pow(2).sum()) for k in keys)
    den = sum(float(w_in[k].pow(2).sum()) for k in keys)
    assert ft_change[3] == pytest.approx(math.sqrt(num / den), rel=1e-6)
    assert ft_change[3] > 5 * ft_change[0]
    delta = load_file(f"{arts['edit']}/deltas.safetensors")["model.layers.1.mlp.down_proj.weight"]
    w = w_in["model.layers.1.mlp.down_proj.weight"]
    assert edit_change[1] == pytest.approx(float(delta.norm() / (w - delta).norm()), rel=1e-6)
    assert torch.isfinite(torch.tensor(list(ft_change.values()))).all()


def test_relative_artifact_paths_resolve_from_the_store_folder(tmp_path, tiny_tok, monkeypatch):
    from editdecay.report.load import load_results
    from editdecay.report.plots import layer_change_figures

    arts = make_artifacts(tmp_path, tiny_tok)
    rel = {k: str(Path(v).relative_to(tmp_path)) for k, v in arts.items()}
    store = build_store(tmp_path / "r.db", seeds=(0,), models=MODELS[:1], methods=("memit",), ft_types=("full",),
                        layers=("all",), artifacts={(MODELS[0], "memit", 0): rel})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    analyze_store(store)
    figures, notes = layer_change_figures(load_results(store))
    assert len(figures) == 1 and not notes


def test_survival_frequency_counts_whole_words():
    from editdecay.analyze.frequency import phrase_counts

    counts = phrase_counts(["Paris, paris! Parisian. New York new york", "NEW YORK"], ["Paris", "New York", "Rome"])
    assert counts == {"Paris": 2, "New York": 3, "Rome": 0}


def test_missing_artifacts_and_trajectories_are_noted_not_fatal(tmp_path):
    from editdecay.report.api import build_report

    store = build_store(tmp_path / "r.db", seeds=(0,), models=MODELS[:1], methods=("memit",), ft_types=("lora",),
                        layers=("all", "edited"), ft_data="no-such-corpus-file.jsonl")
    conn = sqlite3.connect(store)
    conn.execute("DELETE FROM trajectories")
    conn.commit()
    conn.close()
    analyze_store(store)
    report = build_report(store)
    skipped = {f.name: f.reason for f in report.figures if not hasattr(f, "png")}
    assert "trajectories" in skipped and "layer_change" in skipped
    assert "no-such-corpus-file.jsonl" in skipped["survival_vs_frequency"]
    assert any("artifacts" in n for n in report.notes)


def test_bad_stores_give_clear_errors(tmp_path):
    from editdecay.errors import DataError
    from editdecay.report.load import load_results

    with pytest.raises(DataError, match="results store not found"):
        load_results(tmp_path / "missing.db")
    (tmp_path / "junk.db").write_text("this is not sqlite")
    with pytest.raises(DataError, match="junk.db"):
        load_results(tmp_path / "junk.db")
    conn = sqlite3.connect(tmp_path / "partial.db")
    conn.execute("CREATE TABLE runs (run_id TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(DataError, match="table.*stages"):
        load_results(tmp_path / "partial.db")
    store = build_store(tmp_path / "badgrp.db", seeds=(0,), models=MODELS[:1], methods=("memit",),
                        ft_types=("lora",), layers=("all",))
    conn = sqlite3.connect(store)
    conn.execute("UPDATE run_groups SET grp='M_weird' WHERE grp='M_ft'")
    conn.commit()
    conn.close()
    with pytest.raises(DataError, match="M_weird"):
        load_results(store)


def test_unfinished_evaluations_are_left_out(tmp_path):
    from editdecay.report.load import load_results

    store = build_store(tmp_path / "r.db", seeds=(0,), models=MODELS[:1], methods=("memit",), ft_types=("lora",),
                        layers=("all", "edited"))
    conn = sqlite3.connect(store)
    conn.execute("UPDATE runs SET status='running' WHERE run_id='run001'")
    conn.execute("UPDATE stages SET status='running' WHERE stage_id='eval-M_ed_ft-run001'")
    conn.commit()
    conn.close()
    res = load_results(store)
    run = [r for r in res.runs if r.run_id == "run001"][0]
    assert res.eval_id(run, "M_ed_ft") is None and res.eval_id(run, "M_ed") is not None
    assert any("not finished" in n for n in res.notes)
    # a reader of a grid in progress is told so at the top of every format, not only in the notes
    from editdecay.report.api import build_report, report_text
    from editdecay.report.render import render_markdown
    head = "runs: 2, of which 1 finished: a grid still running or cut short"
    assert head in report_text(res).split("[")[0]
    assert head.replace("runs:", "**runs**:") in render_markdown(build_report(res, with_figures=False)).split("##")[0]


def test_cli_contract(grid_store, tmp_path, capsys):
    from editdecay.cli import main

    store = grid_store[0]
    out = tmp_path / "rep"
    done = subprocess.run([sys.executable, "-m", "editdecay.cli", "report", str(store), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (out / "report.html").exists() and (out / "report.md").exists()
    assert len(list((out / "tables").glob("*.csv"))) == 11  # ten tables + edit categories
    assert main(["report", str(store), "--format", "text"]) == 0
    text = capsys.readouterr().out
    for title in ("Edit metrics before and after fine-tuning", "Relative decrease by ft type",
                  "Edit Flip Ratio and emergent edits", "Edit categories", "Selective-layer fine-tuning",
                  "[supported]"):
        assert title in text
    assert main(["report", str(tmp_path / "nope.db"), "--format", "text"]) == 1
    assert "results store not found" in capsys.readouterr().err


def test_the_grid_description_heads_every_format_escaped(tmp_path, tiny_tok):
    from editdecay.experiment.store import Store
    from editdecay.report.api import build_report, write_report
    from editdecay.report.render import render_text

    store = build_store(tmp_path / "results.db", ft_data=str(write_corpus(tmp_path / "ft.jsonl")))
    text = f"Strong edits at 40 steps; where decay starts: benchmarks/results/dose_response/ {XSS}"
    with Store(store) as db:
        db.register_plan("demo", [], [], [], description="an older description")
        db.register_plan("demo", [], [], [], description=text)  # the latest registration wins
    assert build_report(store, with_figures=False).about == [("demo", text)]
    out = tmp_path / "rep"
    write_report(store, out, with_figures=False)
    html_text = (out / "report.html").read_text()
    assert XSS not in html_text and "dose_response/ &lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    md = (out / "report.md").read_text()
    assert "**demo**: Strong edits at 40 steps" in md and XSS not in md
    assert render_text(build_report(store, with_figures=False)).splitlines()[2].startswith("demo: Strong edits")


@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)], ids=["per-edit-path", "paired-runs-path"])
def test_each_claim_is_also_judged_on_the_es_magnitude_margin(tmp_path, seeds):
    """With per-edit ES magnitudes stored, every finding carries a second verdict on them: here AlphaEdit's edits
    lose more margin than MEMIT's (known amounts), so that claim is supported on magnitude and its reverse is not,
    whatever the binary flips say; the decay claim is judged on the before/after magnitudes. Both verdict paths
    carry it: one seed (McNemar per edit) and three seeds (paired t-test over runs)."""
    from editdecay.report.findings import all_findings, compare_conditions
    from editdecay.report.load import load_results

    store = build_store(tmp_path / "m.db", seeds=seeds, models=MODELS[:1], methods=("memit", "alphaedit"),
                        ft_types=("lora",), layers=("all",))
    conn = sqlite3.connect(store)
    groups = conn.execute("SELECT DISTINCT r.method, g.grp, g.eval_stage_id FROM runs r JOIN run_groups g "
                          "USING (run_id) WHERE g.grp IN ('M_ed', 'M_ed_ft')").fetchall()
    loss = {"memit": lambda i: 0.002 * i, "alphaedit": lambda i: 0.002 * i + 0.05}
    for method, grp, sid in groups:
        for i in range(N_RECORDS):
            value = 0.9 if grp == "M_ed" else 0.9 - loss[method](i)
            conn.execute("INSERT INTO record_metrics VALUES (?,?,?,?)", (sid, f"cf{i}", "efficacy_magnitude", value))
    conn.commit()
    conn.close()
    res = load_results(store)
    more = compare_conditions(res, "AlphaEdit decays more", "method", "alphaedit", "memit")
    assert ("McNemar" in more.evidence) == (len(seeds) < 3)
    assert len(seeds) >= 3 or "paired runs with both evaluations (1 of 1 pairs)" in more.evidence
    assert more.margin_verdict == "supported"
    assert f"over {N_RECORDS * len(seeds)} paired edits" in more.margin_evidence and "(+5.0)" in more.margin_evidence
    assert compare_conditions(res, "MEMIT decays more", "method", "memit", "alphaedit").margin_verdict == \
        "not supported"
    decay = all_findings(res)[0]
    assert decay.margin_verdict == "supported" and "Wilcoxon" in decay.margin_evidence
    # no layer selections in this store: no pairs, no margin verdict either
    assert all_findings(res)[2].margin_verdict == "not enough data"
    assert "no run pairs to compare" in all_findings(res)[3].margin_evidence


def test_findings_without_magnitudes_have_no_margin_verdict(written):
    out, _ = written
    findings = json.loads((out / "findings.json").read_text())
    assert [f["margin_verdict"] for f in findings] == ["not enough data"] * 5
    assert "on ES magnitude" in (out / "report.md").read_text()


def test_es_magnitude_trajectory_is_drawn_when_the_store_has_one(tmp_path):
    """Binary efficacy can stay flat while the margin falls: the report draws the magnitude trajectory as a
    figure of its own when the fine-tunes tracked it (and says why it is missing otherwise)."""
    from editdecay.report.load import load_results
    from editdecay.report.plots import Figure, Skipped, trajectories

    store = build_store(tmp_path / "t.db", seeds=(0,), models=MODELS[:1], methods=("memit",), ft_types=("lora",),
                        layers=("all",))
    assert isinstance(trajectories(load_results(store), "efficacy_magnitude"), Skipped)
    conn = sqlite3.connect(store)
    (ft,), = conn.execute("SELECT stage_id FROM run_stages WHERE role='finetune_edit'").fetchall()
    for step, value in ((0, 0.9), (5, 0.8), (10, 0.7)):
        conn.execute("INSERT INTO trajectories VALUES (?,?,?,?)", (ft, step, "efficacy_magnitude", value))
    conn.commit()
    conn.close()
    fig = trajectories(load_results(store), "efficacy_magnitude")
    assert isinstance(fig, Figure) and fig.name == "trajectories_efficacy_magnitude"
    assert fig.png.startswith(b"\x89PNG") and "magnitude" in fig.caption
