"""The SQLite results store: schema, transactional ingest, concurrent writers, integrity check, export."""

from __future__ import annotations

import multiprocessing
import re
import shutil
import sqlite3

import pytest

from editdecay.experiment.store import Store, StoreError

DESIGN_COLUMNS = {  # docs/design.md: the report reads these with plain SQL
    "runs": ["run_id", "grid", "model", "method", "edit_data", "n_edits", "ft_type", "layers", "modules", "ft_data",
             "seed", "config_json", "status", "created_at"],
    "stages": ["stage_id", "kind", "status", "config_json", "artifact", "error", "attempts", "started_at",
               "finished_at", "seconds", "versions_json"],
    "run_groups": ["run_id", "grp", "eval_stage_id"],
    "metrics": ["eval_stage_id", "metric", "value"],
    "record_metrics": ["eval_stage_id", "case_id", "metric", "value"],
    "downstream": ["eval_stage_id", "task", "accuracy", "n"],
    "trajectories": ["ft_stage_id", "step", "metric", "value"],
    "run_stages": ["run_id", "stage_id", "role"],
    "records": ["case_id", "edit_data", "subject", "target_new", "target_true", "prompt"],
}


def _plan(tmp_path, run_id="run-a"):
    groups = {g: f"evaluate-{g}" for g in ("M", "M_ft", "M_ed", "M_ed_ft")}
    stages = [{"stage_id": sid, "kind": "evaluate", "config": {"g": g}, "deps": {}, "artifact": str(tmp_path / sid)}
              for g, sid in groups.items()]
    stages.append({"stage_id": "finetune-x", "kind": "finetune", "config": {}, "deps": {},
                   "artifact": str(tmp_path / "finetune-x")})
    run = {"run_id": run_id, "model": "m", "method": "memit", "edit_data": "counterfact", "n_edits": 2,
           "ft_type": "lora", "layers": "all", "modules": "attn,mlp", "ft_data": "commonsense", "seed": 0,
           "config": {"x": 1}, "groups": groups,
           "stages": {**{f"eval_{g}": s for g, s in groups.items()}, "finetune_edit": "finetune-x"}}
    records = [{"case_id": "7", "edit_data": "counterfact", "subject": "Paris", "target_new": "Rome",
                "target_true": "France", "prompt": "{} is in"}]
    return [run], stages, records


def _evaluation(scale: float) -> dict:
    return {"summary": {"efficacy": 0.5 * scale, "paraphrase": 0.25 * scale, "n_records": 2, "label": "text"},
            "records": [{"case_id": "7", "efficacy": 1.0 * scale, "paraphrase": 0.5, "neighborhood": True},
                        {"case_id": "8", "efficacy": 0.0, "paraphrase": 0.0, "neighborhood": False}],
            "downstream": {"tasks": {"boolq": 0.75, "piqa": 0.5}, "mean": 0.625, "n": {"boolq": 4, "piqa": 4}}}


def test_schema_has_the_design_columns(tmp_path):
    with Store(tmp_path / "r.db") as db:
        for table, columns in DESIGN_COLUMNS.items():
            have = [row[1] for row in db.conn.execute(f"PRAGMA table_info({table})")]
            assert have[: len(columns)] == columns, table
        assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_ingest_is_complete_and_idempotent(tmp_path):
    runs, stages, records = _plan(tmp_path)
    with Store(tmp_path / "r.db") as db:
        db.register_plan("g", runs, stages, records)
        db.register_plan("g", runs, stages, records)  # a re-run registers nothing twice
        assert db.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
        assert db.conn.execute("SELECT COUNT(*) FROM run_stages").fetchone()[0] == 5
        for i, st in enumerate(stages[:4]):
            (tmp_path / st["stage_id"]).mkdir()
            db.mark_running(st["stage_id"])
            db.mark_done(st["stage_id"], "evaluate", tmp_path / st["stage_id"], 1.5, {"torch": "x"},
                         evaluation=_evaluation(i + 1))
        # ingesting the same stage again replaces, never duplicates
        db.mark_done("evaluate-M", "evaluate", tmp_path / "evaluate-M", 1.5, {}, evaluation=_evaluation(1))
        (tmp_path / "finetune-x").mkdir()
        db.mark_done("finetune-x", "finetune", tmp_path / "finetune-x", 2.0, {},
                     trajectory=[{"step": 0, "efficacy": 1.0}, {"step": 5, "efficacy": 0.5, "paraphrase": 0.25}])
        m = db.group_metrics("run-a")
        assert m["M"]["efficacy"] == 0.5 and m["M_ed_ft"]["efficacy"] == 2.0
        assert m["M"]["downstream_mean"] == 0.625 and "label" not in m["M"]
        rec = db.query("SELECT metric, value FROM record_metrics WHERE eval_stage_id='evaluate-M' AND case_id='8'")
        assert {r["metric"]: r["value"] for r in rec} == {"efficacy": 0.0, "paraphrase": 0.0, "neighborhood": 0.0}
        assert db.conn.execute("SELECT COUNT(*) FROM record_metrics WHERE eval_stage_id='evaluate-M'").fetchone()[0] == 6
        down = db.query("SELECT task, accuracy, n FROM downstream WHERE eval_stage_id='evaluate-M' ORDER BY task")
        assert [(r["task"], r["accuracy"], r["n"]) for r in down] == [("boolq", 0.75, 4), ("piqa", 0.5, 4)]
        traj = db.query("SELECT step, metric, value FROM trajectories ORDER BY step, metric")
        assert [(r["step"], r["metric"], r["value"]) for r in traj] == [(0, "efficacy", 1.0), (5, "efficacy", 0.5),
                                                                        (5, "paraphrase", 0.25)]
        assert db.refresh_runs() == {"done": 1}
        assert db.integrity_check() == []


def test_failed_ingest_leaves_no_half_result(tmp_path):
    runs, stages, records = _plan(tmp_path)
    with Store(tmp_path / "r.db") as db:
        db.register_plan("g", runs, stages, records)
        with pytest.raises(sqlite3.IntegrityError):
            with db.transaction() as c:  # an ingest that dies half-way is rolled back as a whole
                c.execute("INSERT INTO metrics VALUES ('evaluate-M', 'efficacy', 1.0)")
                c.execute("INSERT INTO metrics VALUES ('evaluate-M', 'efficacy', 2.0)")
        assert db.conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 0
        assert db.stage("evaluate-M")["status"] == "pending"


def test_failures_are_recorded_and_reset(tmp_path):
    runs, stages, records = _plan(tmp_path)
    with Store(tmp_path / "r.db") as db:
        db.register_plan("g", runs, stages, records)
        db.mark_running("evaluate-M")
        db.mark_failed("evaluate-M", "ValueError: boom", 0.1)
        assert db.stage("evaluate-M")["attempts"] == 1
        assert db.refresh_runs() == {"failed": 1}
        assert db.summary()["failed"][0]["error"] == "ValueError: boom"
        db.mark_running("evaluate-M_ft")
        assert db.reset_interrupted() == 1 and db.stage("evaluate-M_ft")["status"] == "pending"
        assert db.reset_failed() == 1 and db.stage("evaluate-M")["status"] == "pending"
        db.mark_running("evaluate-M")
        assert db.stage("evaluate-M")["attempts"] == 2


def test_integrity_check_finds_broken_invariants(tmp_path):
    runs, stages, records = _plan(tmp_path)
    with Store(tmp_path / "r.db") as db:
        db.register_plan("g", runs, stages, records)
        assert db.integrity_check() == []
        db.conn.execute("UPDATE stages SET status='done', finished_at=1 WHERE stage_id='evaluate-M'")
        db.conn.execute("INSERT INTO metrics VALUES ('evaluate-M_ft', 'efficacy', 1.0)")
        db.conn.execute("UPDATE runs SET status='done'")
        db.conn.execute("UPDATE stages SET status='failed' WHERE stage_id='finetune-x'")
        problems = "\n".join(db.integrity_check())
        assert "done evaluation without metrics: evaluate-M" in problems
        assert "artifact is missing" not in problems  # nothing still to run reads evaluate-M: not a problem
        assert db.missing_artifacts() == ([], ["evaluate-M"])
        assert "metrics of a stage that is not done: evaluate-M_ft" in problems
        assert "run marked done with a stage not done: run-a" in problems
        assert "failed stage without error: finetune-x" in problems


def test_a_missing_artifact_is_a_problem_only_where_a_stage_still_to_run_reads_it(tmp_path):
    """A finished fine-tune whose folder is gone while its evaluation is pending must be computed again
    (a problem); once the evaluation is done, the same missing folder is only noted (a moved store)."""
    stages = [{"stage_id": "finetune-x", "kind": "finetune", "config": {}, "deps": {},
               "artifact": str(tmp_path / "gone")},
              {"stage_id": "evaluate-x", "kind": "evaluate", "config": {}, "deps": {"model": "finetune-x"},
               "artifact": str(tmp_path / "evaluate-x")}]
    with Store(tmp_path / "r.db") as db:
        db.register_plan("g", [], stages, [])
        db.conn.execute("UPDATE stages SET status='done', finished_at=1 WHERE stage_id='finetune-x'")
        assert db.missing_artifacts() == (["finetune-x"], [])
        assert ("done stage whose artifact is missing and a stage still to run reads it: finetune-x"
                in db.integrity_check())
        (tmp_path / "evaluate-x").mkdir()
        db.mark_running("evaluate-x")
        db.mark_done("evaluate-x", "evaluate", tmp_path / "evaluate-x", 1.0, {}, evaluation=_evaluation(1))
        assert db.missing_artifacts() == ([], ["finetune-x"])
        assert db.integrity_check() == []


def _writer(path: str, worker: int, n: int) -> None:
    db = Store(path, timeout_s=30)
    for i in range(n):
        sid = f"evaluate-w{worker}-{i}"
        db.register_plan("g", [], [{"stage_id": sid, "kind": "evaluate", "config": {}, "deps": {},
                                    "artifact": path}], [])
        db.mark_running(sid)
        db.mark_done(sid, "evaluate", path, 0.1, {}, evaluation=_evaluation(1.0 + i))
    db.close()


def test_concurrent_writers_from_several_processes(tmp_path):
    path = str(tmp_path / "r.db")
    Store(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 15)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Store(path) as db:
        assert db.conn.execute("SELECT COUNT(*) FROM stages WHERE status='done'").fetchone()[0] == 45
        assert db.conn.execute("SELECT COUNT(*) FROM record_metrics").fetchone()[0] == 45 * 6
        assert db.integrity_check() == []


def test_export_csv_and_parquet(tmp_path):
    runs, stages, records = _plan(tmp_path)
    with Store(tmp_path / "r.db") as db:
        db.register_plan("g", runs, stages, records)
        (tmp_path / "evaluate-M").mkdir()
        db.mark_done("evaluate-M", "evaluate", tmp_path / "evaluate-M", 1.0, {}, evaluation=_evaluation(1))
        paths = db.export(tmp_path / "csv")
        text = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
        assert text[0] == "eval_stage_id,metric,value" and len(text) == 1 + 4
        assert {p.name for p in paths} >= {"runs.csv", "record_metrics.csv", "downstream.csv"}
        try:
            import pyarrow.parquet as pq
        except ImportError:
            with pytest.raises(StoreError, match="pip install 'editdecay\\[parquet\\]'"):
                db.export(tmp_path / "pq", "parquet")
        else:
            db.export(tmp_path / "pq", "parquet")
            assert pq.read_table(tmp_path / "pq" / "metrics.parquet").num_rows == 4


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path):
    path = tmp_path / "r.db"
    path.write_text("this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open the results store"):
        Store(path)


def test_snapshot_is_one_consistent_file_taken_while_a_writer_holds_the_store(tmp_path):
    runs, stages, records = _plan(tmp_path)
    with Store(tmp_path / "r.db") as db:
        db.register_plan("g", runs, stages, records)
        (tmp_path / "evaluate-M").mkdir()
        db.mark_done("evaluate-M", "evaluate", tmp_path / "evaluate-M", 1.0, {}, evaluation=_evaluation(1))
        (tmp_path / "snap.db-wal").write_bytes(b"stale")  # a -wal left at the target by an earlier store
        out = db.snapshot(tmp_path / "snap.db")
        # the live store is still open in WAL mode and its last commit is only in its -wal file
        assert (tmp_path / "r.db-wal").exists()
        with pytest.raises(StoreError, match="another file"):
            db.snapshot(tmp_path / "r.db")
    assert out == tmp_path / "snap.db" and not (tmp_path / "snap.db.tmp").exists()
    assert not (tmp_path / "snap.db-wal").exists()
    conn = sqlite3.connect(f"file:{out}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 4
        assert conn.execute("SELECT status FROM stages WHERE stage_id = 'evaluate-M'").fetchone()[0] == "done"
    finally:
        conn.close()


def test_snapshot_of_an_older_store_clusters_the_per_record_tables_and_keeps_every_row(tmp_path):
    """The committed study store predates WITHOUT ROWID: its snapshot has the same rows in about half the
    bytes, and a new store is created clustered."""
    from helpers import ROOT

    from editdecay.experiment.store import CLUSTERED_TABLES

    def rows(path):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in CLUSTERED_TABLES + ("stages",)}
        finally:
            conn.close()

    def layout(path):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return {n: "WITHOUT ROWID" in s.upper() for n, s in conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type='table'") if n in CLUSTERED_TABLES}
        finally:
            conn.close()

    old = tmp_path / "old.db"
    shutil.copy(ROOT / "docs" / "results" / "cpu-study.db", old)
    conn = sqlite3.connect(old, isolation_level=None)
    for table in CLUSTERED_TABLES:  # the committed store may already be a clustered snapshot: undo that
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name=?", (table,)).fetchone()[0]
        if "WITHOUT ROWID" in sql.upper():
            conn.execute(f"ALTER TABLE {table} RENAME TO {table}_c")
            conn.execute(re.sub(r"\s*WITHOUT\s+ROWID\s*$", "", sql, flags=re.IGNORECASE))
            conn.execute(f"INSERT INTO {table} SELECT * FROM {table}_c")
            conn.execute(f"DROP TABLE {table}_c")
    conn.execute("VACUUM")
    conn.close()
    assert not any(layout(old).values())
    before = rows(old)
    with Store(old) as db:
        out = db.snapshot(tmp_path / "snap.db")
    assert all(layout(out).values()) and rows(out) == before
    assert before["record_metrics"] and out.stat().st_size < 0.75 * old.stat().st_size
    with Store(tmp_path / "new.db"):
        pass
    assert all(layout(tmp_path / "new.db").values())
