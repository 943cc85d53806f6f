"""The results store's layout: its tables, the version, and how an older file is brought up to it.

Kept apart from :mod:`editdecay.experiment.store` (reading and writing rows) so the schema reads as one page.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 3  # 2: the analysis tables (layer_change, target_frequency, activation_shift, analyses);
# 3: stages.cpu_seconds
ADDED_COLUMNS = {"stages": (("cpu_seconds", "REAL"),)}  # columns a store older than SCHEMA_VERSION gains
STAGE_KINDS = ("stats", "targets", "base", "edit", "finetune", "evaluate")
STAGE_STATUSES = ("pending", "running", "done", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, grid TEXT, model TEXT, method TEXT, edit_data TEXT, n_edits INT, ft_type TEXT,
    layers TEXT, modules TEXT, ft_data TEXT, seed INT, config_json TEXT, status TEXT, created_at REAL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS stages (
    stage_id TEXT PRIMARY KEY, kind TEXT, status TEXT, config_json TEXT, artifact TEXT, error TEXT,
    attempts INT DEFAULT 0, started_at REAL, finished_at REAL, seconds REAL, versions_json TEXT,
    deps_json TEXT, adopted INT DEFAULT 0, cpu_seconds REAL
);
CREATE TABLE IF NOT EXISTS run_groups (
    run_id TEXT, grp TEXT, eval_stage_id TEXT, PRIMARY KEY (run_id, grp)
);
CREATE TABLE IF NOT EXISTS run_stages (
    run_id TEXT, stage_id TEXT, role TEXT, PRIMARY KEY (run_id, stage_id, role)
);
CREATE TABLE IF NOT EXISTS metrics (
    eval_stage_id TEXT, metric TEXT, value REAL, PRIMARY KEY (eval_stage_id, metric)
);
CREATE TABLE IF NOT EXISTS record_metrics (
    eval_stage_id TEXT, case_id TEXT, metric TEXT, value REAL, PRIMARY KEY (eval_stage_id, case_id, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS downstream (
    eval_stage_id TEXT, task TEXT, accuracy REAL, n INT, PRIMARY KEY (eval_stage_id, task)
);
CREATE TABLE IF NOT EXISTS trajectories (
    ft_stage_id TEXT, step INT, metric TEXT, value REAL, PRIMARY KEY (ft_stage_id, step, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    case_id TEXT, edit_data TEXT, subject TEXT, target_new TEXT, target_true TEXT, prompt TEXT,
    PRIMARY KEY (case_id, edit_data)
);
CREATE TABLE IF NOT EXISTS layer_change (
    stage_id TEXT, layer INT, rel_change REAL, edited INT, against TEXT, PRIMARY KEY (stage_id, layer)
);
CREATE TABLE IF NOT EXISTS target_frequency (
    ft_data TEXT, target TEXT, count INT, PRIMARY KEY (ft_data, target)
);
CREATE TABLE IF NOT EXISTS activation_shift (
    ft_stage_id TEXT, layer INT, case_id TEXT, edit_shift REAL, ft_shift REAL, cos REAL, angle_deg REAL,
    base_norm REAL, PRIMARY KEY (ft_stage_id, layer, case_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS analyses (
    analysis TEXT, subject TEXT, status TEXT, note TEXT, created_at REAL, PRIMARY KEY (analysis, subject)
);
CREATE INDEX IF NOT EXISTS idx_stages_status ON stages(status);
CREATE INDEX IF NOT EXISTS idx_run_stages_stage ON run_stages(stage_id);
"""

ANALYSIS_TABLES = ("layer_change", "target_frequency", "activation_shift", "analyses")  # schema 2; may be absent
EXPORT_TABLES = ("runs", "stages", "run_groups", "run_stages", "metrics", "record_metrics", "downstream",
                 "trajectories", "records", *ANALYSIS_TABLES)


def add_missing_columns(conn: sqlite3.Connection) -> None:
    """Columns a store older than :data:`SCHEMA_VERSION` lacks (``CREATE TABLE IF NOT EXISTS`` adds only tables)."""
    for table, columns in ADDED_COLUMNS.items():
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        for name, sql_type in columns:
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")


CLUSTERED_TABLES = ("record_metrics", "trajectories", "activation_shift")  # one row per record or step: WITHOUT ROWID


def compact(conn: sqlite3.Connection) -> None:
    """A snapshot's copy in the current layout: the per-record tables of a store created before they were
    WITHOUT ROWID are rebuilt so (their primary key is the table, not a second copy of every key beside it),
    then the file is vacuumed. About half the bytes of a study store; the rows are the same."""
    schema = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type='table'").fetchall())
    for table in CLUSTERED_TABLES:
        sql = schema.get(table)
        if sql is None or "WITHOUT ROWID" in sql.upper():
            continue
        create = next(s for s in SCHEMA.split(";") if f"EXISTS {table} (" in s).strip()
        conn.execute("BEGIN")
        conn.execute(f"ALTER TABLE {table} RENAME TO {table}_old")
        conn.execute(create)
        conn.execute(f"INSERT INTO {table} SELECT * FROM {table}_old")
        conn.execute(f"DROP TABLE {table}_old")
        conn.execute("COMMIT")
    conn.execute("VACUUM")
