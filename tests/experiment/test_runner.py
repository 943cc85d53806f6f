"""The runner on the tiny grid with the real stages: end to end, failures, retry, adoption, kill -9 and resume.

One reference run (module fixture) is shared by the tests: its first pass makes AlphaEdit's edit fail, its
second pass (``retry_failed``) completes the grid. A second, independent run in a subprocess with two worker
processes is killed with SIGKILL half-way and resumed; its numbers must equal the reference exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from editdecay.artifacts import MARKER
from editdecay.cli import main
from editdecay.errors import ConfigError, EditDecayError
from editdecay.experiment.runner import plan_grid, run_grid, workdir_lock
from editdecay.experiment.stages import run_edit
from editdecay.experiment.store import Store

TINY = ROOT / "configs" / "tiny.yaml"


def edit_failing_for_alphaedit(spec, inputs, out_dir, ctx):
    """The real edit stage, except that AlphaEdit raises (a stage failure the runner must record and survive)."""
    if spec.config["method"] == "alphaedit":
        raise RuntimeError("injected failure: AlphaEdit is down")
    return run_edit(spec, inputs, out_dir, ctx)


def all_numbers(store: Path) -> dict[tuple, float]:
    """Every summary and per-record number of every run's four groups, keyed independently of stage ids."""
    con = sqlite3.connect(store)
    rows = con.execute(
        "SELECT r.method, r.ft_type, g.grp, 'summary', m.metric, m.value FROM runs r JOIN run_groups g USING (run_id)"
        " JOIN metrics m ON m.eval_stage_id = g.eval_stage_id UNION ALL "
        "SELECT r.method, r.ft_type, g.grp, rm.case_id, rm.metric, rm.value FROM runs r JOIN run_groups g"
        " USING (run_id) JOIN record_metrics rm ON rm.eval_stage_id = g.eval_stage_id UNION ALL "
        "SELECT r.method, r.ft_type, 'traj', t.step, t.metric, t.value FROM runs r JOIN run_stages s USING (run_id)"
        " JOIN trajectories t ON t.ft_stage_id = s.stage_id WHERE s.role = 'finetune_edit'"
    ).fetchall()
    con.close()
    out = {tuple(r[:5]): r[5] for r in rows}
    assert len(out) == len(rows)  # no row counted twice
    return out


def stage_rows(store: Path) -> dict[str, tuple]:
    con = sqlite3.connect(store)
    rows = con.execute("SELECT stage_id, status, attempts, started_at, finished_at, adopted FROM stages").fetchall()
    con.close()
    return {r[0]: r[1:] for r in rows}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("reference")
    store, work = base / "results.db", base / "work"
    first = run_grid(TINY, store, workdir=work, stage_fns={"edit": edit_failing_for_alphaedit}, progress=False)
    after_first = stage_rows(store)
    with Store(store) as db:
        status_first = db.summary()
    second = run_grid(TINY, store, workdir=work, retry_failed=True, progress=False)
    return {"store": store, "work": work, "first": first, "after_first": after_first,
            "status_first": status_first, "second": second}


def test_failed_stage_is_recorded_and_independent_stages_go_on(reference):
    first = reference["first"]
    assert len(first.failed) == 1 and first.failed[0].startswith("edit-")
    # AlphaEdit's fine-tunes of the edit and the M_ed / M_ed_ft evaluations of its two runs wait on it
    assert len(first.skipped) == 2 + 2 + 1
    assert first.runs == {"done": 2, "failed": 2} and first.complete
    failed = reference["status_first"]["failed"]
    assert "injected failure: AlphaEdit is down" in failed[0]["error"] and failed[0]["attempts"] == 1
    # the M and M_ft groups of the AlphaEdit runs were measured: they are shared with MEMIT's runs
    assert len(first.executed) == 20 - 1 - 5  # 20 stages: one targets stage serves both methods


def test_retry_failed_completes_the_grid_without_recomputing(reference):
    second, before = reference["second"], reference["after_first"]
    assert second.runs == {"done": 4} and not second.failed and not second.skipped
    assert len(second.executed) == 1 + 5  # the failed edit and what waited on it
    after = stage_rows(reference["store"])
    for sid, row in before.items():
        if row[0] == "done":
            assert after[sid] == row, f"{sid} was recomputed"
    edit_id = reference["first"].failed[0]
    assert after[edit_id][0] == "done" and after[edit_id][1] == 2  # second attempt


def test_end_to_end_store_holds_four_groups_per_run(reference):
    store = reference["store"]
    with Store(store) as db:
        assert db.integrity_check() == []
        runs = [r["run_id"] for r in db.query("SELECT run_id FROM runs WHERE status='done'")]
        assert len(runs) == 4
        for run_id in runs:
            groups = db.group_metrics(run_id)
            assert set(groups) == {"M", "M_ft", "M_ed", "M_ed_ft"}
            for metrics in groups.values():
                assert {"efficacy", "paraphrase", "neighborhood", "downstream_mean"} <= set(metrics)
                assert all(0.0 <= metrics[k] <= 1.0 for k in ("efficacy", "paraphrase", "neighborhood"))
        n_records = db.query("SELECT COUNT(*) AS n FROM records")[0]["n"]
        assert n_records == 3
        per_record = db.query("SELECT COUNT(DISTINCT case_id) AS n FROM record_metrics")[0]["n"]
        assert per_record == 3
        assert db.query("SELECT COUNT(*) AS n FROM downstream WHERE task='boolq'")[0]["n"] == 9
        traj = db.query("SELECT COUNT(DISTINCT ft_stage_id) AS n FROM trajectories")[0]["n"]
        assert traj == 4  # every fine-tune of an edited model tracked its edits
    # the edit folders are real edit artifacts: manifest with the run's records and the deltas file
    edits = sorted((reference["work"] / "stages" / "edit").iterdir())
    assert len(edits) == 2
    for folder in edits:
        assert (folder / "deltas.safetensors").exists() and (folder / MARKER).exists()


def test_rerun_finds_everything_done(reference):
    again = run_grid(TINY, reference["store"], workdir=reference["work"], progress=False)
    assert again.executed == [] and again.adopted == [] and again.runs == {"done": 4}


def test_complete_artifact_without_done_row_is_adopted_not_recomputed(reference, tmp_path):
    store = tmp_path / "copy.db"
    shutil.copy(reference["store"], store)
    victims = sorted(s for s, row in stage_rows(store).items() if s.startswith(("evaluate-", "finetune-")))[:3]
    con = sqlite3.connect(store)
    for sid in victims:  # what a kill between "artifact renamed" and "row marked done" leaves behind
        con.execute("UPDATE stages SET status='running' WHERE stage_id=?", (sid,))
        for table, col in (("metrics", "eval_stage_id"), ("record_metrics", "eval_stage_id"),
                           ("downstream", "eval_stage_id"), ("trajectories", "ft_stage_id")):
            con.execute(f"DELETE FROM {table} WHERE {col}=?", (sid,))
    con.commit()
    con.close()
    result = run_grid(TINY, store, workdir=reference["work"], progress=False)
    assert sorted(result.adopted) == victims and result.executed == []
    assert all_numbers(store) == all_numbers(reference["store"])
    rows = stage_rows(store)
    assert all(rows[s][4] == 1 and rows[s][1] == 1 for s in victims)  # adopted, attempts unchanged
    with Store(store) as db:
        assert db.integrity_check() == []


def _copy_reference(reference, tmp_path) -> tuple[Path, Path]:
    store, work = tmp_path / "copy.db", tmp_path / "work"
    shutil.copy(reference["store"], store)
    shutil.copytree(reference["work"], work, ignore=shutil.ignore_patterns(".runner.lock"))
    return store, work


def test_vanished_artifact_is_computed_again_only_when_a_stage_to_run_reads_it(reference, tmp_path):
    """A new machine has the store but not the work folder: a finished evaluation keeps its numbers and is not
    recomputed; a fine-tune whose artifact vanished runs again only because one of its evaluations is pending."""
    store, work = _copy_reference(reference, tmp_path)
    shutil.rmtree(sorted((work / "stages" / "evaluate").iterdir())[0])
    result = run_grid(TINY, store, workdir=work, progress=False)
    assert result.missing == [] and result.executed == []
    assert all_numbers(store) == all_numbers(reference["store"])

    fine_tune = sorted((work / "stages" / "finetune").iterdir())[0]
    shutil.rmtree(fine_tune)
    evaluation = next(s for s, spec in plan_grid(TINY).stages.items() if fine_tune.name in spec.deps.values())
    with Store(store) as db:
        db.reset_stage(evaluation)  # it never finished: neither its numbers nor its artifact exist
    shutil.rmtree(work / "stages" / "evaluate" / evaluation, ignore_errors=True)
    result = run_grid(TINY, store, workdir=work, progress=False)
    assert result.missing == [fine_tune.name] and result.executed == [fine_tune.name, evaluation]
    assert all_numbers(store) == all_numbers(reference["store"])


def test_store_alone_resumes_a_finished_grid_without_computing_anything(reference, tmp_path):
    store = tmp_path / "copy.db"
    shutil.copy(reference["store"], store)
    result = run_grid(TINY, store, workdir=tmp_path / "new-machine", progress=False)
    assert result.executed == [] and result.missing == [] and result.runs == {"done": 4}
    assert all_numbers(store) == all_numbers(reference["store"])


def _wait_for_done(store: Path, n: int, proc: subprocess.Popen, timeout: float = 120.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the runner finished before it could be killed"
        if store.exists():
            try:
                con = sqlite3.connect(store, timeout=5)
                done = con.execute("SELECT COUNT(*) FROM stages WHERE status='done'").fetchone()[0]
                con.close()
                if done >= n:
                    return done
            except sqlite3.OperationalError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} stages done after {timeout} s")


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    base = tmp_path_factory.mktemp("killed")
    store, work = base / "results.db", base / "work"
    cmd = [sys.executable, "-m", "editdecay.cli", "run", str(TINY), "--store", str(store), "--workdir", str(work),
           "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_done(store, 8, proc)
        before = stage_rows(store)
        markers = {p.parent.name: (p.stat().st_mtime_ns, json.loads(p.read_text()))
                   for p in work.glob(f"stages/*/*/{MARKER}")}
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker processes, mid-grid
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    resumed = subprocess.run(cmd[:-3] + ["--no-progress"], capture_output=True, text=True, timeout=300)
    return {"store": store, "work": work, "before": before, "markers": markers, "resumed": resumed}


def test_sigkill_mid_grid_then_resume_completes_every_run_exactly_once(killed_and_resumed):
    k = killed_and_resumed
    assert k["resumed"].returncode == 0, k["resumed"].stdout + k["resumed"].stderr
    assert "runs: 4 done" in k["resumed"].stdout
    before, after = k["before"], stage_rows(k["store"])
    done_before = [s for s, row in before.items() if row[0] == "done"]
    assert 8 <= len(done_before) < 20
    for sid in done_before:  # finished stages are neither recomputed nor rewritten
        assert after[sid] == before[sid]
    for sid, (mtime, marker) in k["markers"].items():
        path = next(k["work"].glob(f"stages/*/{sid}")) / MARKER
        now = json.loads(path.read_text())
        # a full fine-tune finished before the kill has its weights dropped once its evaluations are done: the
        # marker then says so and nothing else in it changes; every other marker is untouched
        assert {key: v for key, v in now.items() if key != "weights"} == \
            {key: v for key, v in marker.items() if key != "weights"}
        if now.get("weights") != "dropped" or marker.get("weights") == "dropped":
            assert path.stat().st_mtime_ns == mtime
    assert all(row[0] == "done" for row in after.values())
    con = sqlite3.connect(k["store"])
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT run_id) FROM runs WHERE status='done'").fetchone() == (4, 4)
    assert con.execute("SELECT COUNT(*) FROM run_groups").fetchone()[0] == 16
    con.close()
    with Store(k["store"]) as db:
        assert db.integrity_check() == []


def test_same_config_and_seed_twice_gives_identical_metrics(reference, killed_and_resumed):
    # two independent runs of the same grid (in-process vs 2 worker processes, killed and resumed)
    a, b = all_numbers(reference["store"]), all_numbers(killed_and_resumed["store"])
    assert len(a) > 200 and a == b


def test_status_command_reports_progress_and_integrity(killed_and_resumed, capsys):
    assert main(["status", "--store", str(killed_and_resumed["store"]), "--check"]) == 0
    out = capsys.readouterr().out
    assert "runs: 4 (4 done)" in out and "integrity: ok" in out


def test_bad_config_fails_before_any_work(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    raw["models"] = ["tiny:llama", "no-such-model"]
    grid = tmp_path / "bad.yaml"
    grid.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="unknown model 'no-such-model'"):
        run_grid(grid, tmp_path / "r.db", workdir=tmp_path / "work", progress=False)
    assert not (tmp_path / "r.db").exists() and not (tmp_path / "work").exists()
    assert main(["run", str(grid), "--store", str(tmp_path / "r.db")]) == 1
    assert not (tmp_path / "r.db").exists()


def test_one_runner_per_workdir(tmp_path):
    with workdir_lock(tmp_path):
        with pytest.raises(EditDecayError, match="another `editdecay run` is using"):
            with workdir_lock(tmp_path):
                pass


def test_each_edited_fine_tune_stores_where_it_and_its_edit_changed_the_weights(reference):
    """Measured in the stage, while the weights exist (a full fine-tune's are dropped after its evaluation): the
    tiny grid fine-tunes only the edited layers 1 and 2, so those change and no other layer does; the LoRA
    fine-tune's numbers equal the analysis run by hand on its artifacts."""
    from editdecay.analyze.weights import edit_change, finetune_change

    store, work = reference["store"], reference["work"]
    con = sqlite3.connect(store)
    pairs = con.execute("SELECT DISTINCT s.stage_id, json_extract(s.deps_json, '$.model'), r.ft_type FROM runs r "
                        "JOIN run_stages rs USING (run_id) JOIN stages s ON s.stage_id = rs.stage_id "
                        "WHERE rs.role = 'finetune_edit'").fetchall()
    rows = {}
    for sid, layer, change, edited, against in con.execute("SELECT * FROM layer_change"):
        rows.setdefault(sid, {})[layer] = (change, edited, against)
    con.close()
    assert len(pairs) == 4  # two methods x LoRA and full
    for ft_id, edit_id, ft_type in pairs:
        ft, edit = rows[ft_id], rows[edit_id]
        assert {against for _, _, against in ft.values()} == {edit_id}
        assert {layer for layer, (change, _, _) in ft.items() if change > 0} == {1, 2}
        assert all(change == 0.0 for layer, (change, _, _) in ft.items() if layer not in (1, 2))
        assert {layer: flag for layer, (_, flag, _) in edit.items()} == {1: 1, 2: 1}
        edit_dir = work / "stages" / "edit" / edit_id
        by_hand, _ = edit_change(edit_dir)
        assert {layer: change for layer, (change, _, _) in edit.items()} == pytest.approx(by_hand, rel=1e-9)
        if ft_type == "lora":
            expect = finetune_change(edit_dir, work / "stages" / "finetune" / ft_id)
            assert {layer: change for layer, (change, _, _) in ft.items()} == pytest.approx(expect, rel=1e-9)


def test_full_finetune_weights_are_dropped_and_recomputed_only_when_an_evaluation_needs_them(tmp_path):
    """A full fine-tune not kept by the grid is evaluated, then its model copy is deleted; a later run
    recomputes it only because one of its evaluations went missing, and gets the same numbers."""
    raw = yaml.safe_load(TINY.read_text())
    raw.update(methods=["memit"], ft_types=["full"])
    grid = tmp_path / "full.yaml"
    grid.write_text(yaml.safe_dump(raw))
    store, work = tmp_path / "r.db", tmp_path / "work"
    first = run_grid(grid, store, workdir=work, progress=False)
    assert first.runs == {"done": 1}
    ft_dirs = sorted((work / "stages" / "finetune").iterdir())
    assert len(ft_dirs) == 2  # M_ft and M_ed_ft
    for d in ft_dirs:
        assert not list(d.glob("model*.safetensors")) and (d / "manifest.json").exists()
        assert yaml.safe_load((d / MARKER).read_text())["weights"] == "dropped"
    numbers = all_numbers(store)
    again = run_grid(grid, store, workdir=work, progress=False)
    assert again.executed == []  # nothing is missing: the dropped weights are not recomputed

    with Store(store) as db:
        (eval_id,) = [r["eval_stage_id"] for r in db.query("SELECT eval_stage_id FROM run_groups WHERE grp='M_ed_ft'")]
    with Store(store) as db:
        db.reset_stage(eval_id)  # an evaluation whose numbers are lost, with its artifact
    shutil.rmtree(work / "stages" / "evaluate" / eval_id)
    third = run_grid(grid, store, workdir=work, progress=False)
    assert sorted(s.split("-")[0] for s in third.executed) == ["evaluate", "finetune"]
    assert all_numbers(store) == numbers
    with pytest.raises(EditDecayError, match="keep: \\[finetune\\]"):
        from editdecay.experiment.export import export_model

        export_model(third.executed[0] if third.executed[0].startswith("finetune") else third.executed[1],
                     tmp_path / "x", store=store)


def test_a_bfloat16_grid_runs_end_to_end(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    raw.update(methods=["memit"], ft_types=["lora"], dtype="bfloat16", groups=["M_ed", "M_ed_ft"])
    grid = tmp_path / "bf16.yaml"
    grid.write_text(yaml.safe_dump(raw))
    result = run_grid(grid, tmp_path / "r.db", workdir=tmp_path / "work", progress=False)
    assert result.runs == {"done": 1} and not result.failed
    (edit_dir,) = (tmp_path / "work" / "stages" / "edit").iterdir()
    import json

    assert json.loads((edit_dir / "manifest.json").read_text())["dtype"] == "bfloat16"


def test_skip_finetune_prepares_edits_and_a_later_run_completes_with_the_same_numbers(reference, tmp_path):
    store, work = tmp_path / "r.db", tmp_path / "work"
    first = run_grid(TINY, store, workdir=work, skip=["finetune"], progress=False)
    assert first.complete and first.failed == [] and first.deferred
    assert not any(s.startswith("finetune-") for s in first.executed)
    assert {s.split("-")[0] for s in first.executed} == {"base", "stats", "targets", "edit", "evaluate"}
    deferred_kinds = {s.split("-")[0] for s in first.deferred}
    assert deferred_kinds == {"finetune", "evaluate"}  # the fine-tunes and the evaluations of fine-tuned models
    with Store(store) as db:
        assert db.query("SELECT COUNT(*) AS n FROM stages WHERE kind='finetune' AND status='done'")[0]["n"] == 0
    second = run_grid(TINY, store, workdir=work, progress=False)
    assert set(second.executed) == set(first.deferred) and second.runs == {"done": 4}
    assert all_numbers(store) == all_numbers(reference["store"])
    assert main(["run", str(TINY), "--store", str(store), "--workdir", str(work), "--skip", "finetune",
                 "--no-progress"]) == 0


def test_skip_names_only_known_stage_kinds(tmp_path):
    with pytest.raises(ConfigError, match="--skip fine-tune: unknown stage kind; allowed: stats, targets"):
        run_grid(TINY, tmp_path / "r.db", workdir=tmp_path / "work", skip=["fine-tune"], progress=False)
    assert not (tmp_path / "r.db").exists()


def test_ready_stages_start_longest_chain_first():
    """The critical path of every stage is its own estimate plus its longest dependant chain, so a fine-tune
    ranks above the evaluation of the model it starts from, and every stage above each of its dependants."""
    from editdecay.experiment.cost import planned_stage_seconds
    from editdecay.experiment.runner import critical_path_seconds, plan_grid

    plan = plan_grid(TINY)
    rank = critical_path_seconds(plan)
    for sid, spec in plan.stages.items():
        for dep in spec.deps.values():
            assert rank[dep] > rank[sid]
        if spec.kind == "evaluate":  # a sink: nothing waits on an evaluation, so its rank is its own estimate
            assert rank[sid] == pytest.approx(planned_stage_seconds(plan, sid))
    fine_tunes = [s for s, spec in plan.stages.items() if spec.kind == "finetune"]
    evaluations = [s for s, spec in plan.stages.items() if spec.kind == "evaluate"]
    assert min(rank[s] for s in fine_tunes) > max(rank[s] for s in evaluations)


def test_results_first_evaluates_each_fine_tune_before_the_next(reference):
    """The default order: with one worker, the evaluations reading a fine-tune run right after it, so a grid
    interrupted between fine-tunes has every finished fine-tune's numbers in the store."""
    from editdecay.experiment.runner import plan_grid

    plan = plan_grid(TINY)
    executed = reference["first"].executed  # one in-process worker: finished in the order started
    fine_tunes = [i for i, sid in enumerate(executed) if plan.stages[sid].kind == "finetune"]
    assert len(fine_tunes) >= 2
    for i in fine_tunes:
        readers = {s for s, spec in plan.stages.items() if executed[i] in spec.deps.values()}
        assert readers and set(executed[i + 1:i + 1 + len(readers)]) == readers


def test_stage_orders_rank_fine_tunes_and_evaluations_oppositely(tmp_path):
    """critical-path ranks every fine-tune before every evaluation; results-first ranks every evaluation (of a
    fine-tuned model or not) before every fine-tune. An unknown order is refused by name before any work."""
    from editdecay.experiment.runner import plan_grid, stage_priority

    plan = plan_grid(TINY)
    fine_tunes = [s for s, spec in plan.stages.items() if spec.kind == "finetune"]
    evaluations = [s for s, spec in plan.stages.items() if spec.kind == "evaluate"]
    of_fine_tunes = [s for s in evaluations if set(plan.stages[s].deps.values()) & set(fine_tunes)]
    assert fine_tunes and of_fine_tunes
    key = stage_priority(plan, "critical-path")
    assert max(key[s] for s in fine_tunes) < min(key[s] for s in evaluations)
    key = stage_priority(plan, "results-first")
    assert max(key[s] for s in evaluations) < min(key[s] for s in fine_tunes)
    with pytest.raises(ConfigError, match="--order 'depth': allowed: results-first, critical-path"):
        run_grid(TINY, tmp_path / "r.db", workdir=tmp_path / "work", order="depth", progress=False)
    assert not (tmp_path / "r.db").exists()


def test_every_stage_records_its_cpu_time_beside_its_wall_time(reference, capsys):
    """Wall seconds grow with the machine's load; the CPU seconds of the process that ran the stage do not."""
    con = sqlite3.connect(reference["store"])
    rows = con.execute("SELECT kind, seconds, cpu_seconds FROM stages WHERE status='done'").fetchall()
    con.close()
    assert rows and all(cpu is not None and 0 < cpu <= wall * (os.cpu_count() or 1) + 1.0 for _, wall, cpu in rows)
    assert main(["status", "--store", str(reference["store"])]) == 0
    out = capsys.readouterr().out
    finetune_line = next(line for line in out.splitlines() if line.startswith("finetune"))
    cpu = sum(c for k, _, c in rows if k == "finetune")
    assert "CPU s" in out and finetune_line.split()[-1] == f"{cpu:.0f}"


def test_the_committed_study_store_gains_the_cpu_time_column_and_keeps_its_rows(tmp_path):
    """A store written before CPU time was recorded (schema 2, docs/results/cpu-study.db) opens, gains the
    column with no value for its old stages, and keeps every row."""
    old = tmp_path / "old.db"
    shutil.copy(ROOT / "docs" / "results" / "cpu-study.db", old)
    con = sqlite3.connect(old)
    before = con.execute("SELECT stage_id, status, seconds FROM stages ORDER BY stage_id").fetchall()
    if "cpu_seconds" in {r[1] for r in con.execute("PRAGMA table_info(stages)")}:  # a later snapshot has it
        con.execute("ALTER TABLE stages DROP COLUMN cpu_seconds")
        con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with Store(old) as db:
        rows = db.query("SELECT stage_id, status, seconds, cpu_seconds FROM stages ORDER BY stage_id")
        assert [tuple(r)[:3] for r in rows] == before and all(r["cpu_seconds"] is None for r in rows)
        assert db.query("SELECT value FROM meta WHERE key='schema_version'")[0][0] == "3"


def test_status_estimates_what_is_left_from_each_kinds_median_cpu_seconds(reference, capsys):
    from editdecay.commands.status import remaining_cpu_seconds

    summary = {"stages": {"finetune": {"done": 3, "pending": 2, "running": 1}, "evaluate": {"pending": 4},
                          "edit": {"done": 2}},
               "seconds_by_kind": {"finetune": {"median_cpu": 100.0}, "edit": {"median_cpu": 7.0}}}
    assert remaining_cpu_seconds(summary) == (300.0, ["4 evaluate"])  # no evaluation has finished: not guessed
    assert remaining_cpu_seconds({"stages": {"edit": {"done": 2}}, "seconds_by_kind": {}}) is None
    assert main(["status", "--store", str(reference["store"])]) == 0
    assert "still to run" not in capsys.readouterr().out  # the reference grid is complete

