"""What stages leave for the store and the log: the statistics stage's warning about too few tokens per key
dimension is printed once, not again by every edit stage that reads those statistics (their manifests still
record it); an edited model's fine-tune keeps its last tracked scores and the evaluation of it takes them; a
fine-tune's layer_change.json is read with a clear error when it is malformed."""

from __future__ import annotations

import json
import warnings

import pytest
import yaml
from helpers import ROOT

from editdecay.edit.stats import StatsWarning
from editdecay.experiment.runner import run_grid


@pytest.fixture(scope="module")
def lora_grid(tmp_path_factory):
    """The tiny grid with LoRA only (both methods: two edit stages read one statistics stage), run in this process
    with every warning recorded."""
    tmp = tmp_path_factory.mktemp("lora_grid")
    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    raw.update(ft_types=["lora"])
    grid = tmp / "grid.yaml"
    grid.write_text(yaml.safe_dump(raw))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_grid(grid, tmp / "r.db", workdir=tmp / "work", progress=False)
    assert result.runs == {"done": 2}
    return tmp, caught


def test_low_token_statistics_warn_once_per_statistics_stage(lora_grid):
    tmp, caught = lora_grid
    low = [w for w in caught if issubclass(w.category, StatsWarning) and "tokens per dimension" in str(w.message)]
    assert len(low) == 1
    manifests = sorted((tmp / "work" / "stages" / "edit").glob("*/manifest.json"))
    assert len(manifests) == 2
    for path in manifests:
        assert json.loads(path.read_text())["statistics"]["tokens_per_dim"] < 100


def test_the_store_names_what_each_stage_costs_depend_on(lora_grid):
    """What `editdecay status` compares like with like by: every stage's model and its runs' edit count, the
    fine-tune's type, and its CPU seconds."""
    from editdecay.experiment.store import Store

    tmp, _ = lora_grid
    with Store(tmp / "r.db") as db:
        costs = db.stage_costs()
    assert {c["model"] for c in costs} == {"tiny:llama"} and {c["n_edits"] for c in costs} == {3}
    assert {c["ft_type"] for c in costs if c["kind"] == "finetune"} == {"lora"}
    assert {c["ft_type"] for c in costs if c["kind"] != "finetune"} == {None}
    assert all(c["status"] == "done" and c["cpu_seconds"] > 0 for c in costs)


def test_the_evaluation_of_each_edited_fine_tune_takes_its_last_tracked_scores(lora_grid):
    """Scoring the run's records on M_ed_ft is what the tracker did at the fine-tune's last step: the evaluation
    stage takes those scores; the unedited model's fine-tune tracks nothing and is scored by its evaluation."""
    from pathlib import Path

    from editdecay.artifacts import EDIT_SCORES

    tmp, _ = lora_grid
    evaluations = [json.loads(p.read_text()) for p in (tmp / "work" / "stages" / "evaluate").glob("*/evaluation.json")]
    of_finetunes = [e for e in evaluations if Path(e["model"]).parent.name == "finetune"]
    assert len(evaluations) == 6 and len(of_finetunes) == 3  # M, M_ft, M_ed and M_ed_ft of two methods
    tracked = [e for e in of_finetunes if (Path(e["model"]) / "trajectory.json").exists()]
    assert len(tracked) == 2
    for e in of_finetunes:
        kept = Path(e["model"]) / EDIT_SCORES
        if e in tracked:
            assert e["edit_scores_from"] == str(kept) and e["records"] == json.loads(kept.read_text())["records"]
        else:
            assert "edit_scores_from" not in e and not kept.exists()
    assert all("edit_scores_from" not in e for e in evaluations if e not in of_finetunes)


def test_plan_estimates_a_grid_from_the_stage_costs_measured_in_a_store(lora_grid, capsys):
    """`editdecay plan --costs-from STORE`: each planned stage at the median CPU seconds of the store's done
    stages like it (the planned row matches what the store recorded for the same stage), else its kind's."""
    import statistics

    from editdecay.cli import main
    from editdecay.experiment.measured import MeasuredCosts, measured_plan_seconds, planned_costs, signature
    from editdecay.experiment.runner import plan_grid
    from editdecay.experiment.store import Store

    tmp, _ = lora_grid
    with Store(tmp / "r.db") as db:
        done = {c["stage_id"]: c for c in db.stage_costs()}
    plan = plan_grid(tmp / "grid.yaml")
    rows = planned_costs(plan)
    assert len(rows) == len(done) and all(signature(r) == signature(done[r["stage_id"]]) for r in rows)
    seconds, sources = measured_plan_seconds(plan, MeasuredCosts.from_store(tmp / "r.db"))
    assert sources == {"like": len(rows), "kind": 0, "constants": 0}
    expect: dict[str, float] = {}
    for r in rows:
        like = [c["cpu_seconds"] for c in done.values() if signature(c) == signature(r)]
        expect[r["kind"]] = expect.get(r["kind"], 0.0) + statistics.median(like)
    assert seconds == pytest.approx(expect)
    # the tiny grid with full fine-tuning too: its full fine-tunes have nothing like them in a LoRA-only store
    both = plan_grid(ROOT / "configs" / "tiny.yaml")
    _, sources = measured_plan_seconds(both, MeasuredCosts.from_store(tmp / "r.db"))
    n_full = sum(1 for r in planned_costs(both) if r["ft_type"] == "full")
    assert sources["kind"] == n_full > 0 and sources["constants"] == 0

    assert main(["plan", str(tmp / "grid.yaml"), "--costs-from", str(tmp / "r.db")]) == 0
    out = capsys.readouterr().out
    assert f"{len(rows)} stage(s) at the median of like stages" in out and ", 0 at their kind's, 0 from" in out
    assert main(["plan", str(tmp / "grid.yaml"), "--costs-from", str(tmp / "none.db")]) == 1
    assert "none.db: no results store here" in capsys.readouterr().err
    Store(tmp / "empty.db").close()
    assert main(["plan", str(tmp / "grid.yaml"), "--costs-from", str(tmp / "empty.db")]) == 1
    assert "empty.db: no done stage has CPU seconds" in capsys.readouterr().err


@pytest.mark.parametrize("text, needle", [("{not json", "not valid JSON"),
                                          ('{"finetune": {"1": 0.1}, "edit": {}}', "edited_layers"),
                                          ('{"finetune": {"one": 0.1}, "edit": {}, "edited_layers": []}', "layer index")])
def test_a_malformed_layer_change_file_is_named(tmp_path, text, needle):
    from editdecay.errors import DataError
    from editdecay.experiment.execute import read_layer_change

    path = tmp_path / "layer_change.json"
    path.write_text(text)
    with pytest.raises(DataError, match=needle) as info:
        read_layer_change(path)
    assert str(path) in str(info.value)
