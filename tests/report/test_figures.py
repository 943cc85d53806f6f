"""The report's figures choose what they draw: the weight-change panels of one setting's layer selections side by
side, and trajectory lines that never pool different edit sets or fine-tuning data."""

from __future__ import annotations

import sqlite3

from helpers.store import FT_TYPES, METHODS, MODELS, N_RECORDS, build_store


def test_weight_change_panels_put_one_settings_layer_selections_side_by_side(tmp_path):
    """With more configurations than panels, the (model, method, ft type) fine-tuned under the most layer
    selections is drawn first, all / edited / non-edited in that order, and the note says what was left out."""
    from editdecay.experiment.store import Store
    from editdecay.report.load import load_results
    from editdecay.report.plots import layer_change_figures, layer_change_panels

    store = build_store(tmp_path / "lc.db", seeds=(0,), models=MODELS[:1])
    res = load_results(store)
    with Store(store) as db:
        for run in res.runs:
            if run.layer_selection == "all" or (run.method, run.ft_type) == ("alphaedit", "full"):
                db.put_layer_change(res.edited_ft_stage(run).stage_id, {0: 0.01, 1: 0.02, 2: 0.03})
    res = load_results(store)
    panels, missing, n = layer_change_panels(res, max_figures=3)
    assert [key[1:] for key, _ in panels] == [("alphaedit", "full", "all"), ("alphaedit", "full", "edited"),
                                             ("alphaedit", "full", "non-edited")]
    assert n == len(METHODS) * len(FT_TYPES) + 2 and len(missing) == len(res.runs) - n
    figures, notes = layer_change_figures(res, max_figures=3)
    assert len(figures) == 1 and any(f"showing 3 of {n} configurations" in note for note in notes)


def test_trajectory_lines_never_pool_different_edit_sets_or_fine_tuning_data(tmp_path):
    from editdecay.report.load import load_results
    from editdecay.report.plots import survival_cells, tradeoff_points, trajectory_lines

    store = build_store(tmp_path / "t.db", seeds=(0, 1), models=MODELS[:1], methods=("memit",), ft_types=("lora",),
                        layers=("all",))
    conn = sqlite3.connect(store)
    (run_id,) = conn.execute("SELECT run_id FROM runs WHERE seed = 1").fetchone()
    conn.execute("UPDATE runs SET edit_data = 'zsre', ft_data = 'hotpotqa' WHERE run_id = ?", (run_id,))
    conn.commit()
    conn.close()
    res = load_results(store)
    lines = trajectory_lines(res, "efficacy")
    settings = {key[0][1:] for key in lines}
    assert settings == {("counterfact", N_RECORDS, "commonsense"), ("zsre", N_RECORDS, "hotpotqa")}
    assert all(len(values) == 1 for steps in lines.values() for values in steps.values())  # one run each
    cells = survival_cells(res)  # the survival heatmap's panels, likewise
    assert {key[0][1:] for key in cells} == settings and all(len(v) == 1 for v in cells.values())
    points = tradeoff_points(res)  # and the trade-off's
    assert {key[0] for key in points} == {f"{MODELS[0]} / counterfact {N_RECORDS} / on commonsense",
                                          f"{MODELS[0]} / zsre {N_RECORDS} / on hotpotqa"}
    assert all(len(v) == 1 for v in points.values())
