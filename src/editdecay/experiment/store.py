"""The results store: one SQLite file that indexes every run, stage and measured number.

Why SQLite: one file, no server, transactional (a crash never leaves half a result), and readable with plain
SQL by the report stage. WAL journaling plus a busy timeout lets several worker processes write at once;
every multi-row write happens inside one ``BEGIN IMMEDIATE`` transaction.

The schema is fixed by docs/design.md (the report reads it); extra tables/columns may be added, never renamed.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from editdecay.errors import EditDecayError
from editdecay.experiment.store_schema import (  # noqa: F401  (re-exported: the store's public constants)
    ANALYSIS_TABLES,
    CLUSTERED_TABLES,
    EXPORT_TABLES,
    SCHEMA,
    SCHEMA_VERSION,
    STAGE_KINDS,
    STAGE_STATUSES,
    add_missing_columns,
    compact,
)


class StoreError(EditDecayError):
    """The results store cannot be opened or holds inconsistent data; the message names the file."""


def _num(value: Any) -> float | None:
    """A metric value as float (bools count as 0/1); None for anything non-numeric."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class Store:
    """A connection to one results file. Not shared between processes: each worker opens its own."""

    def __init__(self, path: str | os.PathLike, timeout_s: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None)
            self.conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            with self.transaction():
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                add_missing_columns(self.conn)
                self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                # an older store gains the new tables and columns above: it is now this version
                self.conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version' AND CAST(value AS INT) < ?",
                                  (str(SCHEMA_VERSION), SCHEMA_VERSION))
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open the results store ({exc})") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so concurrent writers queue, not deadlock."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def query(self, sql: str, params: tuple | list = ()) -> list[sqlite3.Row]:
        self.conn.row_factory = sqlite3.Row
        try:
            return list(self.conn.execute(sql, params))
        finally:
            self.conn.row_factory = None

    # ------------------------------------------------------------------------------------------------------
    # registration (idempotent: a re-run of the same grid finds its rows)

    def register_plan(self, grid_name: str, runs: list[dict[str, Any]], stages: list[dict[str, Any]],
                      records: list[dict[str, Any]], description: str = "") -> None:
        """Insert runs, stages, run->stage links and edit records in one transaction; existing rows are kept.

        The grid's description (what it is for) is kept under ``meta['grid_description:<name>']``, the latest
        one registered, so the report can say what the grid set out to show.
        """
        now = time.time()
        with self.transaction() as c:
            if description:
                c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"grid_description:{grid_name}", description))
            for st in stages:
                c.execute(
                    "INSERT OR IGNORE INTO stages (stage_id, kind, status, config_json, artifact, attempts, deps_json)"
                    " VALUES (?, ?, 'pending', ?, ?, 0, ?)",
                    (st["stage_id"], st["kind"], json.dumps(st["config"], sort_keys=True), st["artifact"],
                     json.dumps(st["deps"], sort_keys=True)),
                )
                # the workdir may have moved since the stage was first registered: point at the current artifact
                c.execute("UPDATE stages SET artifact = ? WHERE stage_id = ?", (st["artifact"], st["stage_id"]))
            for run in runs:
                c.execute(
                    "INSERT OR IGNORE INTO runs (run_id, grid, model, method, edit_data, n_edits, ft_type, layers,"
                    " modules, ft_data, seed, config_json, status, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (run["run_id"], grid_name, run["model"], run["method"], run["edit_data"], run["n_edits"],
                     run["ft_type"], run["layers"], run["modules"], run["ft_data"], run["seed"],
                     json.dumps(run["config"], sort_keys=True), "pending", now),
                )
                for grp, eval_id in run["groups"].items():
                    c.execute("INSERT OR REPLACE INTO run_groups VALUES (?, ?, ?)", (run["run_id"], grp, eval_id))
                for role, stage_id in run["stages"].items():
                    c.execute("INSERT OR IGNORE INTO run_stages VALUES (?, ?, ?)", (run["run_id"], stage_id, role))
            for rec in records:
                c.execute(
                    "INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?, ?)",
                    (rec["case_id"], rec["edit_data"], rec["subject"], rec["target_new"], rec.get("target_true"),
                     rec["prompt"]),
                )

    # ------------------------------------------------------------------------------------------------------
    # stage status

    def stage(self, stage_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM stages WHERE stage_id = ?", (stage_id,))
        return dict(rows[0]) if rows else None

    def stage_statuses(self, stage_ids: list[str] | None = None) -> dict[str, str]:
        rows = self.query("SELECT stage_id, status FROM stages")
        out = {r["stage_id"]: r["status"] for r in rows}
        return out if stage_ids is None else {s: out[s] for s in stage_ids if s in out}

    def mark_running(self, stage_id: str) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE stages SET status='running', attempts=attempts+1, started_at=?, error=NULL WHERE stage_id=?",
                (time.time(), stage_id),
            )

    def reset_interrupted(self) -> int:
        """Stages left 'running' by a killed runner go back to pending (their artifact, if complete, is adopted)."""
        with self.transaction() as c:
            return c.execute("UPDATE stages SET status='pending' WHERE status='running'").rowcount

    def reset_stage(self, stage_id: str) -> None:
        """A done stage whose artifact vanished: forget its numbers and make it pending, in one transaction."""
        with self.transaction() as c:
            for table in ("metrics", "record_metrics", "downstream"):
                c.execute(f"DELETE FROM {table} WHERE eval_stage_id = ?", (stage_id,))
            c.execute("DELETE FROM trajectories WHERE ft_stage_id = ?", (stage_id,))
            c.execute("DELETE FROM layer_change WHERE stage_id = ?", (stage_id,))  # analyses of the old artifact
            c.execute("DELETE FROM activation_shift WHERE ft_stage_id = ?", (stage_id,))
            c.execute("UPDATE stages SET status='pending', finished_at=NULL WHERE stage_id=?", (stage_id,))

    def reset_failed(self) -> int:
        """``--retry-failed``: failed stages become pending again (attempts keep counting)."""
        with self.transaction() as c:
            return c.execute("UPDATE stages SET status='pending', error=NULL WHERE status='failed'").rowcount

    def mark_failed(self, stage_id: str, error: str, seconds: float | None = None,
                    cpu_seconds: float | None = None) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE stages SET status='failed', error=?, finished_at=?, seconds=?, cpu_seconds=? WHERE stage_id=?",
                (error, time.time(), seconds, cpu_seconds, stage_id),
            )

    def mark_done(self, stage_id: str, kind: str, artifact: str | os.PathLike, seconds: float | None,
                  versions: dict[str, Any], evaluation: dict[str, Any] | None = None,
                  trajectory: list[dict[str, Any]] | None = None, adopted: bool = False,
                  cpu_seconds: float | None = None, layer_change: dict[str, Any] | None = None) -> None:
        """Ingest a finished stage's numbers and mark it done: one transaction, so both or neither happen.
        ``layer_change`` (a fine-tune of an edited model): its per-layer change against the edit stage named by
        ``against``, and that edit's own per-layer change (``edit``, ``edited_layers``).

        ``seconds`` is wall time (it grows with the machine's load); ``cpu_seconds`` the CPU time of the process
        that ran the stage, user + system over all its threads (what the stage cost, whatever else ran)."""
        now = time.time()
        with self.transaction() as c:
            if evaluation is not None:
                self._ingest_evaluation(c, stage_id, evaluation)
            if trajectory is not None:
                self._ingest_trajectory(c, stage_id, trajectory)
            if layer_change is not None:
                against = layer_change["against"]
                self._ingest_layer_change(c, against, layer_change["edit"], edited=layer_change["edited_layers"])
                self._ingest_layer_change(c, stage_id, layer_change["finetune"], against=against)
            c.execute(
                "UPDATE stages SET status='done', error=NULL, artifact=?, finished_at=?, seconds=?, versions_json=?,"
                " adopted=?, started_at=COALESCE(started_at, ?), cpu_seconds=? WHERE stage_id=?",
                (str(artifact), now, seconds, json.dumps(versions, sort_keys=True), int(adopted), now, cpu_seconds,
                 stage_id),
            )

    @staticmethod
    def _ingest_evaluation(c: sqlite3.Connection, stage_id: str, ev: dict[str, Any]) -> None:
        for table in ("metrics", "record_metrics", "downstream"):
            c.execute(f"DELETE FROM {table} WHERE eval_stage_id = ?", (stage_id,))
        for metric, value in (ev.get("summary") or {}).items():
            if _num(value) is not None:
                c.execute("INSERT INTO metrics VALUES (?, ?, ?)", (stage_id, metric, _num(value)))
        for rec in ev.get("records") or []:
            case_id = str(rec.get("case_id"))
            for metric, value in rec.items():
                if metric != "case_id" and _num(value) is not None:
                    c.execute("INSERT OR REPLACE INTO record_metrics VALUES (?, ?, ?, ?)",
                              (stage_id, case_id, metric, _num(value)))
        down = ev.get("downstream") or {}
        counts = down.get("n") or {}
        for task, acc in (down.get("tasks") or {}).items():
            n = counts.get(task) if isinstance(counts, dict) else None
            c.execute("INSERT INTO downstream VALUES (?, ?, ?, ?)", (stage_id, task, _num(acc), n))
        if _num(down.get("mean")) is not None:
            c.execute("INSERT OR REPLACE INTO metrics VALUES (?, 'downstream_mean', ?)", (stage_id, _num(down["mean"])))

    @staticmethod
    def _ingest_trajectory(c: sqlite3.Connection, stage_id: str, trajectory: list[dict[str, Any]]) -> None:
        c.execute("DELETE FROM trajectories WHERE ft_stage_id = ?", (stage_id,))
        for point in trajectory:
            step = point.get("step")
            for metric, value in point.items():
                if metric != "step" and _num(value) is not None:
                    c.execute("INSERT OR REPLACE INTO trajectories VALUES (?, ?, ?, ?)", (stage_id, step, metric,
                                                                                            _num(value)))

    def refresh_runs(self) -> dict[str, int]:
        """Derive each run's status from its stages: done (all done), failed (any failed), running, pending."""
        now = time.time()
        with self.transaction() as c:
            rows = c.execute(
                "SELECT rs.run_id, s.status FROM run_stages rs JOIN stages s ON s.stage_id = rs.stage_id"
            ).fetchall()
            per_run: dict[str, set[str]] = {}
            for run_id, status in rows:
                per_run.setdefault(run_id, set()).add(status)
            for run_id, statuses in per_run.items():
                if statuses == {"done"}:
                    status = "done"
                elif "failed" in statuses:
                    status = "failed"
                elif "running" in statuses or "done" in statuses:
                    status = "running"
                else:
                    status = "pending"
                c.execute(
                    "UPDATE runs SET status=?, finished_at=CASE WHEN ?='done' THEN COALESCE(finished_at, ?) ELSE NULL"
                    " END WHERE run_id=?", (status, status, now, run_id),
                )
        counts: dict[str, int] = {}
        for (status,) in self.conn.execute("SELECT status FROM runs"):
            counts[status] = counts.get(status, 0) + 1
        return counts

    # ------------------------------------------------------------------------------------------------------
    # analyses (`editdecay analyze`): rows computed from a stage's artifacts, replaced as a whole per subject

    def run_stage_artifacts(self) -> list[dict[str, Any]]:
        """Every run with its configuration and its stages: ``{"run_id", "model", ..., "seed", "stages": [{"role",
        "stage_id", "kind", "status", "artifact"}]}`` (what an analysis needs to find a run's folders)."""
        runs: dict[str, dict[str, Any]] = {}
        for r in self.query("SELECT run_id, model, method, edit_data, n_edits, ft_type, layers, modules, ft_data, seed"
                            " FROM runs ORDER BY run_id"):
            runs[r["run_id"]] = {**dict(r), "stages": []}
        for r in self.query("SELECT rs.run_id, rs.role, s.stage_id, s.kind, s.status, s.artifact FROM run_stages rs"
                            " JOIN stages s ON s.stage_id = rs.stage_id ORDER BY rs.run_id, rs.role"):
            if r["run_id"] in runs:
                runs[r["run_id"]]["stages"].append({k: r[k] for k in ("role", "stage_id", "kind", "status",
                                                                      "artifact")})
        return list(runs.values())

    def note_analysis(self, analysis: str, subject: str, status: str, note: str | None = None) -> None:
        """Record that ``analysis`` of ``subject`` (a stage id or a corpus) is done or failed (and why)."""
        with self.transaction() as c:
            self._note(c, analysis, subject, status, note)

    @staticmethod
    def _note(c: sqlite3.Connection, analysis: str, subject: str, status: str, note: str | None) -> None:
        c.execute("INSERT OR REPLACE INTO analyses VALUES (?, ?, ?, ?, ?)", (analysis, subject, status, note, time.time()))

    def put_layer_change(self, stage_id: str, change: dict[int, float | None], edited: list[int] | None = None,
                         against: str | None = None) -> None:
        """One stage's per-layer relative weight change (an edit's: ``edited`` flags its layers; a fine-tune's:
        ``against`` names the stage of the model it is compared with)."""
        with self.transaction() as c:
            self._ingest_layer_change(c, stage_id, change, edited, against)

    def _ingest_layer_change(self, c: sqlite3.Connection, stage_id: str, change: dict[int, float | None],
                             edited: list[int] | None = None, against: str | None = None) -> None:
        c.execute("DELETE FROM layer_change WHERE stage_id = ?", (stage_id,))
        for layer in sorted(set(change) | set(edited or [])):
            flag = None if edited is None else int(layer in edited)
            c.execute("INSERT INTO layer_change VALUES (?, ?, ?, ?, ?)",
                      (stage_id, int(layer), _num(change.get(layer)), flag, against))
        self._note(c, "layer_change", stage_id, "done", None)

    def put_target_frequency(self, ft_data: str, counts: dict[str, int]) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM target_frequency WHERE ft_data = ?", (ft_data,))
            c.executemany("INSERT INTO target_frequency VALUES (?, ?, ?)",
                          [(ft_data, target, int(n)) for target, n in sorted(counts.items())])
            self._note(c, "target_frequency", ft_data, "done", None)

    def put_activation_shift(self, ft_stage_id: str, records: list[dict[str, Any]], note: str | None = None) -> None:
        """Per (layer, case) rows of the shift analysis of the edited fine-tune ``ft_stage_id``."""
        with self.transaction() as c:
            c.execute("DELETE FROM activation_shift WHERE ft_stage_id = ?", (ft_stage_id,))
            for r in records:
                c.execute("INSERT OR REPLACE INTO activation_shift VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (ft_stage_id, int(r["layer"]), str(r["case_id"]),
                           *(_num(r.get(k)) for k in ("edit_shift", "ft_shift", "cos", "angle_deg", "base_norm"))))
            self._note(c, "activation_shift", ft_stage_id, "done", note)

    # ------------------------------------------------------------------------------------------------------
    # reading, checking, exporting

    def summary(self) -> dict[str, Any]:
        """Counts of runs and stages by status, plus failed stages with their errors (for `editdecay status`)."""
        runs = {r["status"]: r["n"] for r in self.query("SELECT status, COUNT(*) AS n FROM runs GROUP BY status")}
        stages: dict[str, dict[str, int]] = {}
        for r in self.query("SELECT kind, status, COUNT(*) AS n FROM stages GROUP BY kind, status"):
            stages.setdefault(r["kind"], {})[r["status"]] = r["n"]
        failed = [dict(r) for r in self.query(
            "SELECT stage_id, kind, attempts, error FROM stages WHERE status='failed' ORDER BY stage_id")]
        seconds = self.query("SELECT COALESCE(SUM(seconds), 0) AS s FROM stages WHERE status='done'")[0]["s"]
        by_kind: dict[str, dict[str, Any]] = {}
        for r in self.query("SELECT kind, seconds, cpu_seconds FROM stages WHERE status='done'"):
            k = by_kind.setdefault(r["kind"], {"wall": 0.0, "cpu": 0.0, "cpus": []})
            k["wall"] += r["seconds"] or 0.0
            if r["cpu_seconds"] is not None:
                k["cpus"].append(float(r["cpu_seconds"]))
        for k in by_kind.values():  # CPU seconds only for stages finished since they were recorded
            cpus = k.pop("cpus")
            k.update(cpu=sum(cpus), with_cpu=len(cpus), median_cpu=statistics.median(cpus) if cpus else None)
        grids = [r["grid"] for r in self.query("SELECT DISTINCT grid FROM runs ORDER BY grid")]
        return {"runs": runs, "stages": stages, "failed": failed, "seconds_done": seconds, "seconds_by_kind": by_kind,
                "grids": grids}

    def stage_costs(self) -> list[dict[str, Any]]:
        """Per stage: kind, status, CPU seconds and what its cost depends on besides its kind (model, fine-tuning
        type, steps and edit-preserving strategy, number of edits of its runs), so an estimate can compare like
        with like (:mod:`editdecay.experiment.measured`)."""
        return [dict(r) for r in self.query(
            "SELECT s.stage_id, s.kind, s.status, s.cpu_seconds, MAX(r.model) AS model, MAX(r.n_edits) AS n_edits,"
            " json_extract(s.config_json, '$.finetune.type') AS ft_type,"
            " json_extract(s.config_json, '$.finetune.max_steps') AS steps,"
            " json_extract(s.config_json, '$.finetune.preserve_strategy') AS preserve FROM stages s"
            " LEFT JOIN run_stages rs ON rs.stage_id = s.stage_id LEFT JOIN runs r ON r.run_id = rs.run_id"
            " GROUP BY s.stage_id ORDER BY s.stage_id")]

    def group_metrics(self, run_id: str) -> dict[str, dict[str, float]]:
        """{group: {metric: value}} of one run: the four groups' summary numbers."""
        out: dict[str, dict[str, float]] = {}
        for r in self.query(
            "SELECT g.grp, m.metric, m.value FROM run_groups g JOIN metrics m ON m.eval_stage_id = g.eval_stage_id"
            " WHERE g.run_id = ? ORDER BY g.grp, m.metric", (run_id,),
        ):
            out.setdefault(r["grp"], {})[r["metric"]] = r["value"]
        return out

    def integrity_check(self) -> list[str]:
        """Problems found (empty list = consistent): SQLite's own check plus the store's invariants."""
        problems: list[str] = []
        result = [r[0] for r in self.conn.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            problems.extend(f"sqlite: {r}" for r in result)
        checks = [
            ("stage with unknown kind", f"SELECT stage_id FROM stages WHERE kind NOT IN {STAGE_KINDS}"),
            ("stage with unknown status", f"SELECT stage_id FROM stages WHERE status NOT IN {STAGE_STATUSES}"),
            ("done stage without finish time", "SELECT stage_id FROM stages WHERE status='done' AND finished_at IS NULL"),
            ("failed stage without error", "SELECT stage_id FROM stages WHERE status='failed' AND error IS NULL"),
            ("run_stages row pointing to a missing stage",
             "SELECT rs.stage_id FROM run_stages rs LEFT JOIN stages s USING (stage_id) WHERE s.stage_id IS NULL"),
            ("run_groups row pointing to a missing stage",
             "SELECT g.eval_stage_id FROM run_groups g LEFT JOIN stages s ON s.stage_id = g.eval_stage_id"
             " WHERE s.stage_id IS NULL"),
            ("metrics of a stage that is not done", "SELECT DISTINCT m.eval_stage_id FROM metrics m JOIN stages s"
             " ON s.stage_id = m.eval_stage_id WHERE s.status != 'done'"),
            ("done evaluation without metrics", "SELECT s.stage_id FROM stages s WHERE s.kind='evaluate' AND"
             " s.status='done' AND NOT EXISTS (SELECT 1 FROM metrics m WHERE m.eval_stage_id = s.stage_id)"),
            ("run marked done with a stage not done", "SELECT DISTINCT r.run_id FROM runs r JOIN run_stages rs"
             " USING (run_id) JOIN stages s ON s.stage_id = rs.stage_id WHERE r.status='done' AND s.status!='done'"),
            ("run without all four groups", "SELECT r.run_id FROM runs r WHERE (SELECT COUNT(DISTINCT grp) FROM"
             " run_groups g WHERE g.run_id = r.run_id) != 4"),
        ]
        for label, sql in checks:
            problems.extend(f"{label}: {r[0]}" for r in self.conn.execute(sql).fetchall())
        needed, _ = self.missing_artifacts()
        problems.extend(f"done stage whose artifact is missing and a stage still to run reads it: {sid}"
                        for sid in needed)
        return problems

    def missing_artifacts(self) -> tuple[list[str], list[str]]:
        """Done stages whose artifact folder is not here: (those a stage still to run reads, the rest). The rest
        is normal on a store moved to another machine: their numbers are in the store and nothing needs them (the
        runner recomputes only the first kind)."""
        rows = self.conn.execute("SELECT stage_id, status, artifact, deps_json FROM stages").fetchall()
        read_by_pending = {dep for _, status, _, deps in rows if status != "done"
                           for dep in json.loads(deps or "{}").values()}
        missing = [sid for sid, status, artifact, _ in rows
                   if status == "done" and (not artifact or not Path(artifact).exists())]
        return ([sid for sid in missing if sid in read_by_pending],
                [sid for sid in missing if sid not in read_by_pending])

    def snapshot(self, out: str | os.PathLike) -> Path:
        """A consistent one-file copy of the store, safe to take while a run writes to it and to commit.

        SQLite's online backup copies a single point in time (a plain file copy of a WAL store can miss the
        latest commits or mix two states); the copy is written beside ``out`` in rollback-journal mode (no -wal
        file belongs to it) and renamed into place, so ``out`` is never half written.
        """
        out = Path(out)
        if out.resolve() == self.path.resolve():
            raise StoreError(f"{out}: a snapshot must go to another file than the store it copies")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.unlink(missing_ok=True)
        dst = sqlite3.connect(str(tmp), isolation_level=None)  # autocommit: _compact runs its own transaction
        try:
            self.conn.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")
            compact(dst)
        finally:
            dst.close()
        for stale in (out.with_name(out.name + "-wal"), out.with_name(out.name + "-shm")):
            stale.unlink(missing_ok=True)  # left by an earlier store at that path; they would not belong to the copy
        os.replace(tmp, out)
        return out

    def export(self, out_dir: str | os.PathLike, fmt: str = "csv") -> list[Path]:
        """Write every table to ``out_dir/<table>.csv`` (or ``.parquet`` with pyarrow installed)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if fmt not in ("csv", "parquet"):
            raise StoreError(f"export format {fmt!r} is not supported; choose csv or parquet")
        if fmt == "parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise StoreError("Parquet export needs pyarrow: pip install 'editdecay[parquet]'") from None
        written = []
        for table in EXPORT_TABLES:
            cur = self.conn.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in cur.description]
            rows = cur.fetchall()
            path = out_dir / f"{table}.{fmt}"
            if fmt == "csv":
                tmp = path.with_suffix(".csv.tmp")
                with open(tmp, "w", newline="", encoding="utf-8") as fh:
                    writer = csv.writer(fh)
                    writer.writerow(columns)
                    writer.writerows(rows)
                os.replace(tmp, path)
            else:
                data = {col: [row[i] for row in rows] for i, col in enumerate(columns)}
                pq.write_table(pa.table(data), str(path))
            written.append(path)
        return written
