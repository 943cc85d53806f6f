"""Read a results store (SQLite, schema in docs/design.md) with plain SQL into simple dataclasses.

The report depends only on the store's schema, not on the experiment package's Python API, so it can read a
store while a grid is still running (read-only connection) and any store written by an older version. It
reads nothing else: the analyses that need artifacts (per-layer weight change, target frequency, activation
shift) are written into the store by ``editdecay analyze``; a store without their tables (schema 1) simply
has no such analysis.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editdecay.errors import DataError
from editdecay.groups import GROUPS

REQUIRED_TABLES = ("runs", "stages", "run_groups", "metrics", "record_metrics", "downstream")
RECORD_METRICS = ("efficacy", "paraphrase", "neighborhood", "efficacy_magnitude")
def _preserve(row: Any, keys: Any, path: Any) -> str:
    """A run's preserve strategy from its config_json (the grid axis), "none" where the store predates it."""
    if "config_json" not in keys or not row["config_json"]:
        return "none"
    return str(_json(row["config_json"], f"runs row '{row['run_id']}'", path).get("preserve") or "none")


RUN_KEY = ("model", "method", "edit_data", "n_edits", "ft_type", "layers", "modules", "ft_data", "preserve")
SHIFT_COLUMNS = ("edit_shift", "ft_shift", "cos", "angle_deg", "base_norm")


@dataclass(frozen=True)
class Run:
    """One row of ``runs``: a single configuration of the grid at one seed."""

    run_id: str
    model: str
    method: str
    edit_data: str
    n_edits: int
    ft_type: str
    layers: str
    modules: str
    ft_data: str
    seed: int
    status: str
    preserve: str = "none"  # the edit-preserving strategy of M_ed_ft's fine-tune (a grid axis; "none" before it)

    def key(self, drop: tuple[str, ...] = ()) -> tuple:
        """The configuration without the seed (and without the factors in ``drop``): what seeds are pooled over."""
        return tuple(getattr(self, name) for name in RUN_KEY if name not in drop)

    @property
    def layer_selection(self) -> str:
        return normalise_layers(self.layers)


@dataclass(frozen=True)
class Stage:
    stage_id: str
    kind: str
    status: str
    artifact: str | None
    config: dict[str, Any]
    seconds: float | None = None  # the stage's compute time (stages.seconds), None where the store lacks it


@dataclass(frozen=True)
class RecordInfo:
    case_id: str
    edit_data: str
    subject: str
    target_new: str
    target_true: str
    prompt: str


@dataclass(frozen=True)
class LayerChange:
    """One row of ``layer_change``: an edit's ‖ΔW‖/‖W_base‖ (``edited`` flags its layers) or a fine-tune's
    ‖W_ft − W_in‖/‖W_in‖ against the stage ``against``."""

    layer: int
    rel_change: float
    edited: bool | None
    against: str | None


@dataclass
class Results:
    """Everything the report needs from one store, indexed for lookups."""

    path: str
    runs: list[Run]
    stages: dict[str, Stage]
    groups: dict[str, dict[str, str]]  # run_id -> grp -> eval_stage_id
    metrics: dict[str, dict[str, float]]  # eval_stage_id -> metric -> value
    record_metrics: dict[str, dict[str, dict[str, float]]]  # eval_stage_id -> case_id -> metric -> value
    downstream: dict[str, dict[str, tuple[float, int]]]  # eval_stage_id -> task -> (accuracy, n)
    trajectories: dict[str, list[dict[str, float]]]  # ft_stage_id -> [{"step", metric: value}] sorted by step
    run_stages: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # run_id -> [(stage_id, role)]
    records: dict[str, RecordInfo] = field(default_factory=dict)  # case_id -> info
    notes: list[str] = field(default_factory=list)
    # analyses written by `editdecay analyze` (empty when the store has none, e.g. an older store)
    layer_change: dict[str, dict[int, LayerChange]] = field(default_factory=dict)  # stage_id -> layer -> row
    target_frequency: dict[str, dict[str, int]] = field(default_factory=dict)  # ft_data -> target -> count
    activation_shift: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # ft_stage_id -> rows
    analyses: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)  # (analysis, subject) -> (status, note)
    descriptions: dict[str, str] = field(default_factory=dict)  # grid name -> what the grid is for (its YAML)

    def eval_id(self, run: Run, grp: str) -> str | None:
        return self.groups.get(run.run_id, {}).get(grp)

    def summary(self, run: Run, grp: str, metric: str) -> float | None:
        """A summary metric of one group's evaluation; falls back to the mean of per-record values."""
        eid = self.eval_id(run, grp)
        if eid is None:
            return None
        value = self.metrics.get(eid, {}).get(metric)
        if value is not None and not math.isnan(value):
            return value
        per = [m[metric] for m in self.record_metrics.get(eid, {}).values() if metric in m]
        return sum(per) / len(per) if per else None

    def per_record(self, run: Run, grp: str) -> dict[str, dict[str, float]]:
        eid = self.eval_id(run, grp)
        return self.record_metrics.get(eid, {}) if eid else {}

    def downstream_mean(self, run: Run, grp: str) -> float | None:
        """Unweighted mean accuracy over the downstream tasks (the study's downstream score)."""
        eid = self.eval_id(run, grp)
        tasks = self.downstream.get(eid or "", {})
        if not tasks:
            return None
        return sum(acc for acc, _ in tasks.values()) / len(tasks)

    def stages_of(self, run: Run, kind: str) -> list[tuple[Stage, str]]:
        out = []
        for stage_id, role in self.run_stages.get(run.run_id, []):
            stage = self.stages.get(stage_id)
            if stage is not None and stage.kind == kind:
                out.append((stage, role))
        return out

    def edited_ft_stage(self, run: Run) -> Stage | None:
        """The fine-tuning stage that produced M_ed_ft (not the one that produced M_ft).

        Chosen by role name first (a role mentioning the edited model), then by the stage whose trajectory
        tracks edits; a run with a single fine-tuning stage that has a trajectory uses it.
        """
        candidates = self.stages_of(run, "finetune")
        for stage, role in candidates:
            if set(re.split(r"[^a-z]+", role.lower())) & {"ed", "edit", "edited"}:
                return stage
        tracked = [stage for stage, _ in candidates if stage.stage_id in self.trajectories]
        return tracked[0] if len(tracked) == 1 else None

    def edit_stage(self, run: Run) -> Stage | None:
        stages = self.stages_of(run, "edit")
        return stages[0][0] if stages else None


def normalise_layers(value: str | None) -> str:
    """Canonical layer-selection name: 'all', 'edited', 'non-edited', or the explicit list as written."""
    text = (value or "all").strip().lower().replace("_", "-")
    if text in ("", "all", "none", "null"):
        return "all"
    if text in ("edited", "edited-only", "edited-layers"):
        return "edited"
    if text in ("non-edited", "nonedited", "non-edited-only", "unedited", "not-edited"):
        return "non-edited"
    return text


def _connect(path: Path) -> tuple[sqlite3.Connection, set[str]]:
    if not path.exists():
        raise DataError(str(path), "results store not found")
    try:
        conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=30)
        conn.execute("PRAGMA query_only = ON")
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise DataError(str(path), f"not an SQLite results store ({exc})") from None
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if missing:
        conn.close()
        raise DataError(str(path), f"not a results store: table(s) {', '.join(missing)} missing")
    conn.row_factory = sqlite3.Row
    conn.execute("BEGIN")  # one read transaction: a consistent snapshot while writers keep going
    return conn, tables


def _json(text: Any, where: str, path: Path) -> dict[str, Any]:
    if text in (None, ""):
        return {}
    try:
        value = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise DataError(str(path), f"{where}: config_json is not valid JSON ({exc})") from None
    return value if isinstance(value, dict) else {"value": value}


def _float(value: Any, path: Path, where: str) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(str(path), f"{where}: value {value!r} is not a number") from None


def _seconds(row: sqlite3.Row, path: Path) -> float | None:
    """A stage's ``seconds`` column (older stores have none; a stage not yet finished has NULL)."""
    if "seconds" not in row.keys() or row["seconds"] is None:
        return None
    return _float(row["seconds"], path, f"stage '{row['stage_id']}' seconds")


def load_results(path: str | Path) -> Results:
    """Read the whole store; runs with no finished evaluation yet are left out (the store may be in use)."""
    path = Path(path)
    conn, tables = _connect(path)
    try:
        return _load(conn, tables, path)
    except sqlite3.DatabaseError as exc:
        raise DataError(str(path), f"cannot read the results store ({exc})") from None
    finally:
        conn.close()


def _load(conn: sqlite3.Connection, tables: set[str], path: Path) -> Results:
    notes: list[str] = []
    runs: list[Run] = []
    unfinished = 0
    for row in conn.execute("SELECT * FROM runs ORDER BY run_id"):
        keys = row.keys()
        status = (row["status"] if "status" in keys else "done") or "done"
        unfinished += status != "done"
        for column in ("model", "method", "ft_type"):
            if row[column] in (None, ""):
                raise DataError(str(path), f"runs row '{row['run_id']}': column '{column}' is empty")
        try:
            n_edits = int(row["n_edits"]) if row["n_edits"] is not None else 0
            seed = int(row["seed"]) if row["seed"] is not None else 0
        except (TypeError, ValueError):
            raise DataError(str(path), f"runs row '{row['run_id']}': n_edits/seed must be integers") from None
        runs.append(Run(
            run_id=str(row["run_id"]), model=str(row["model"]), method=str(row["method"]).lower(),
            edit_data=str(row["edit_data"] or ""), n_edits=n_edits, ft_type=str(row["ft_type"]).lower(),
            layers=normalise_layers(row["layers"]), modules=str(row["modules"] or "attn,mlp"),
            ft_data=str(row["ft_data"] or ""), seed=seed, status=status, preserve=_preserve(row, keys, path),
        ))
    if unfinished:
        notes.append(f"{unfinished} of {len(runs)} run(s) are not finished: only their completed evaluations "
                     "are used.")

    stages = {
        str(r["stage_id"]): Stage(str(r["stage_id"]), str(r["kind"]), str(r["status"]), r["artifact"],
                                  _json(r["config_json"], f"stage '{r['stage_id']}'", path),
                                  _seconds(r, path))
        for r in conn.execute("SELECT * FROM stages")
    }
    groups: dict[str, dict[str, str]] = defaultdict(dict)
    for r in conn.execute("SELECT run_id, grp, eval_stage_id FROM run_groups"):
        if r["grp"] not in GROUPS:
            raise DataError(str(path), f"run_groups row for run '{r['run_id']}': group '{r['grp']}' is not one of "
                            f"{', '.join(GROUPS)}")
        stage = stages.get(str(r["eval_stage_id"]))
        if stage is not None and stage.status != "done":
            continue  # an evaluation still pending/running/failed has no results to show
        groups[str(r["run_id"])][str(r["grp"])] = str(r["eval_stage_id"])

    metrics: dict[str, dict[str, float]] = defaultdict(dict)
    for r in conn.execute("SELECT eval_stage_id, metric, value FROM metrics"):
        metrics[str(r[0])][str(r[1])] = _float(r[2], path, f"metrics '{r[0]}' '{r[1]}'")
    record_metrics: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    wanted = ",".join("?" * len(RECORD_METRICS))  # only what the report uses: stores can hold millions of rows
    for r in conn.execute(f"SELECT eval_stage_id, case_id, metric, value FROM record_metrics WHERE metric IN ({wanted})",
                          RECORD_METRICS):
        record_metrics[str(r[0])][str(r[1])][str(r[2])] = _float(r[3], path, f"record_metrics '{r[0]}' case '{r[1]}'")
    downstream: dict[str, dict[str, tuple[float, int]]] = defaultdict(dict)
    for r in conn.execute("SELECT eval_stage_id, task, accuracy, n FROM downstream"):
        downstream[str(r[0])][str(r[1])] = (_float(r[2], path, f"downstream '{r[0]}' '{r[1]}'"), int(r[3] or 0))

    trajectories: dict[str, list[dict[str, float]]] = {}
    if "trajectories" in tables:
        steps: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
        for r in conn.execute("SELECT ft_stage_id, step, metric, value FROM trajectories"):
            point = steps[str(r[0])].setdefault(int(r[1]), {"step": int(r[1])})
            point[str(r[2])] = _float(r[3], path, f"trajectories '{r[0]}' step {r[1]}")
        trajectories = {sid: [pts[s] for s in sorted(pts)] for sid, pts in steps.items()}
    run_stages: dict[str, list[tuple[str, str]]] = defaultdict(list)
    if "run_stages" in tables:
        for r in conn.execute("SELECT run_id, stage_id, role FROM run_stages ORDER BY run_id, stage_id"):
            run_stages[str(r[0])].append((str(r[1]), str(r[2] or "")))
    records: dict[str, RecordInfo] = {}
    if "records" in tables:
        for r in conn.execute("SELECT case_id, edit_data, subject, target_new, target_true, prompt FROM records"):
            records[str(r[0])] = RecordInfo(str(r[0]), str(r[1] or ""), str(r[2] or ""), str(r[3] or ""),
                                            str(r[4] or ""), str(r[5] or ""))
    runs = [_with_stage_preserve(run, run_stages, stages) for run in runs if groups.get(run.run_id)]
    res = Results(str(path), runs, stages, dict(groups), dict(metrics),
                  {k: dict(v) for k, v in record_metrics.items()}, dict(downstream), trajectories,
                  dict(run_stages), records, notes)
    _load_analyses(conn, tables, path, res)
    if "meta" in tables:
        prefix = "grid_description:"
        for key, value in conn.execute("SELECT key, value FROM meta WHERE key LIKE 'grid_description:%' ORDER BY key"):
            res.descriptions[str(key)[len(prefix):]] = str(value or "")
    return res


def _with_stage_preserve(run: Run, run_stages: dict[str, list[tuple[str, str]]], stages: dict[str, Stage]) -> Run:
    """Where the runs row does not name a strategy, the edited fine-tune's stage config does (older stores)."""
    if run.preserve != "none":
        return run
    for stage_id, role in run_stages.get(run.run_id, []):
        stage = stages.get(stage_id)
        if role == "finetune_edit" and stage is not None:
            cfg = stage.config.get("finetune", stage.config)
            strategy = cfg.get("preserve_strategy") if isinstance(cfg, dict) else None
            if strategy and strategy != "none":
                return dataclasses.replace(run, preserve=str(strategy))
    return run


def _load_analyses(conn: sqlite3.Connection, tables: set[str], path: Path, res: Results) -> None:
    """The analysis tables of schema 2, each only when present."""
    if "layer_change" in tables:
        changes: dict[str, dict[int, LayerChange]] = defaultdict(dict)
        for r in conn.execute("SELECT stage_id, layer, rel_change, edited, against FROM layer_change"):
            changes[str(r[0])][int(r[1])] = LayerChange(int(r[1]), _float(r[2], path, f"layer_change '{r[0]}'"),
                                                        None if r[3] is None else bool(r[3]), r[4])
        res.layer_change = dict(changes)
    if "target_frequency" in tables:
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        for r in conn.execute("SELECT ft_data, target, count FROM target_frequency"):
            counts[str(r[0])][str(r[1])] = int(r[2] or 0)
        res.target_frequency = dict(counts)
    if "activation_shift" in tables:
        shift: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in conn.execute(f"SELECT ft_stage_id, layer, case_id, {', '.join(SHIFT_COLUMNS)} FROM activation_shift"
                              " ORDER BY ft_stage_id, layer, case_id"):
            shift[str(r[0])].append({"layer": int(r[1]), "case_id": str(r[2]),
                                     **{k: _float(r[3 + i], path, f"activation_shift '{r[0]}'")
                                        for i, k in enumerate(SHIFT_COLUMNS)}})
        res.activation_shift = dict(shift)
    if "analyses" in tables:
        res.analyses = {(str(r[0]), str(r[1])): (str(r[2] or ""), str(r[3] or ""))
                        for r in conn.execute("SELECT analysis, subject, status, note FROM analyses")}
