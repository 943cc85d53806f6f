"""Drive a planned grid (run_grid): topological order, content-addressed artifacts, resumable, failure-tolerant.

The invariant that makes kill -9 safe: a stage counts as finished only when (1) its artifact folder is
complete — the stage function writes it atomically, then :func:`execute.execute_stage` atomically writes the
``_stage.json`` marker — and (2) the store row says ``done``, written together with the stage's numbers in one
transaction. On resume, a stage whose marker exists but whose row is not done is *adopted* (its numbers are
ingested, nothing is recomputed); a row left ``running`` by a dead runner goes back to pending.

Backends (:mod:`editdecay.experiment.backends`): ``local`` runs stages in this process (``workers=1``) or in N
spawned worker processes; ``ray`` submits them as Ray tasks; each runs :func:`execute.execute_stage`. In every
backend the driver alone writes the store, so workers only need the shared artifact folder; the store itself
is still safe for concurrent writers.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editdecay.artifacts import drop_weights, read_marker, weights_dropped
from editdecay.errors import ConfigError, EditDecayError
from editdecay.experiment.backends import BACKENDS, Backend, capacity, make_backend
from editdecay.experiment.cost import ensure_plan_fits, estimate_plan, machine_memory, planned_stage_seconds
from editdecay.experiment.execute import artifact_path, is_complete, log, read_outputs
from editdecay.experiment.plan import Plan, StageSpec, expand, is_transient
from editdecay.experiment.schema import Grid, load_grid
from editdecay.experiment.stages import StageFn
from editdecay.experiment.store import STAGE_KINDS, Store


@dataclass
class RunResult:
    """What one `editdecay run` did."""

    runs: dict[str, int]  # run status -> count
    executed: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # blocked by a failed dependency
    missing: list[str] = field(default_factory=list)  # recorded done, artifact gone: computed again
    deferred: list[str] = field(default_factory=list)  # left pending on purpose (``skip``)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """Every run finished or was recorded as failed, or every stage not deferred by ``skip`` did (exit 0)."""
        if self.deferred:
            return not self.failed and not self.skipped
        return set(self.runs) <= {"done", "failed"}


@contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """One runner per work folder: two runners would compute the same stage twice."""
    workdir.mkdir(parents=True, exist_ok=True)
    fh = open(workdir / ".runner.lock", "w")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EditDecayError(f"another `editdecay run` is using {workdir}; wait for it or use --workdir") from None
        yield
    finally:
        fh.close()


def default_workdir(grid: Grid, store_path: Path) -> Path:
    """--workdir, else the grid's ``workdir`` key, else ``<store folder>/editdecay-work``."""
    if grid.workdir:
        return Path(grid.workdir).expanduser()
    return store_path.resolve().parent / "editdecay-work"


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask; os.cpu_count() where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | str) -> int:
    """``--workers``: a positive integer, or ``auto`` = one per usable core (the CPU budget then packs them)."""
    if workers == "auto":
        return usable_cpus()
    if isinstance(workers, str) and workers.isdigit():
        workers = int(workers)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers {workers!r}: must be a positive integer or 'auto'")
    return workers


@dataclass
class Budget:
    """What the local backend's stages may use at once: their declared ``num_cpus`` summed within ``cpus`` and
    their peak memory (declared ``memory_gb`` or the estimate of :mod:`editdecay.experiment.cost`, the larger)
    within ``memory`` bytes. A stage that alone exceeds a limit still runs, alone. ``None`` = no limit (Ray
    places tasks by their own resources)."""

    cpus: float | None = None
    memory: float | None = None
    peaks: dict[str, float] = field(default_factory=dict)  # stage id -> estimated peak bytes
    used_cpus: float = 0.0
    used_memory: float = 0.0

    def need(self, spec: StageSpec) -> tuple[float, float]:
        """(cores, bytes): the declared num_cpus (at least 1), the larger of declared memory_gb and the estimate."""
        declared = float(spec.resources.get("memory_gb") or 0) * 2**30
        return max(1.0, float(spec.resources.get("num_cpus") or 1)), max(declared, self.peaks.get(spec.stage_id, 0.0))

    def fits(self, spec: StageSpec, idle: bool) -> bool:
        cpus, memory = self.need(spec)
        return idle or ((self.cpus is None or self.used_cpus + cpus <= self.cpus)
                        and (self.memory is None or self.used_memory + memory <= self.memory))

    def take(self, spec: StageSpec, sign: int = 1) -> None:
        cpus, memory = self.need(spec)
        self.used_cpus += sign * cpus
        self.used_memory += sign * memory


def plan_grid(grid_or_path: Grid | str | os.PathLike) -> Plan:
    grid = grid_or_path if isinstance(grid_or_path, Grid) else load_grid(grid_or_path)
    return expand(grid)


def run_grid(
    grid_or_path: Grid | str | os.PathLike,
    store: str | os.PathLike,
    workdir: str | os.PathLike | None = None,
    backend: str = "local",
    workers: int | str = 1,
    retry_failed: bool = False,
    stage_fns: dict[str, StageFn | str] | None = None,
    progress: bool = True,
    ray_address: str | None = None,
    skip: tuple[str, ...] | list[str] = (),
    order: str = "results-first",
    cpus: int | None = None,
) -> RunResult:
    """Validate, plan and execute a grid into ``store``; re-running resumes where it stopped.

    ``skip`` names stage kinds to leave pending, with every stage that needs one of them: ``("finetune",)``
    computes the statistics, target values, edits and their evaluations now (the edits are shared by every
    fine-tuning setting) and leaves the fine-tunes for a later run of the same grid.

    ``order`` picks which ready stage a free worker starts (:data:`ORDERS`): ``results-first`` finishes what is
    under way (a fine-tune's evaluations before the next fine-tune), so every finished hour is in the store and
    a transient model copy is dropped early; ``critical-path`` starts the longest remaining chain first, the
    shortest wall time when the machine and the work folder last until the grid ends.

    ``workers``: the local backend's worker processes (1 = in this process; ``"auto"`` = one per usable core).
    Stages run side by side only while their declared ``num_cpus`` fit in ``cpus`` (default: the usable cores)
    and their estimated peak memory in this machine's RAM, so more workers never oversubscribe the machine.
    """
    started = time.perf_counter()
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: allowed: {', '.join(BACKENDS)}")
    if order not in ORDERS:
        raise ConfigError(f"--order {order!r}: allowed: {', '.join(ORDERS)}")
    workers = resolve_workers(workers)
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1):
        raise ConfigError(f"--cpus {cpus!r}: must be a positive integer")
    unknown = sorted(set(skip) - set(STAGE_KINDS))
    if unknown:
        raise ConfigError(f"--skip {','.join(unknown)}: unknown stage kind; allowed: {', '.join(STAGE_KINDS)}")
    plan = plan_grid(grid_or_path)  # every config error surfaces here, before any work
    store_path = Path(store)
    work = Path(workdir).expanduser() if workdir else default_workdir(plan.grid, store_path)
    costs = estimate_plan(plan)
    ensure_plan_fits(plan, workdir=work, check_machine=(backend == "local"), costs=costs)  # refuse before any work
    budget = Budget() if backend == "ray" else Budget(cpus or usable_cpus(), machine_memory(),
                                                       {c.stage_id: c.memory for c in costs})
    with workdir_lock(work), Store(store_path) as db:
        artifacts = {sid: artifact_path(work, spec) for sid, spec in plan.stages.items()}
        db.register_plan(plan.grid.name, [r.row(r.values | {"edit": r.edit_hparams, "finetune": r.finetune})
                                          for r in plan.runs],
                         [{**spec.to_dict(), "artifact": str(artifacts[sid])} for sid, spec in plan.stages.items()],
                         plan.records, description=plan.grid.description)
        interrupted = db.reset_interrupted()
        if interrupted:
            log(f"{interrupted} stage(s) were interrupted by a previous runner; resuming them")
        if retry_failed:
            n = db.reset_failed()
            if n:
                log(f"retrying {n} failed stage(s)")
        result = RunResult(runs={})
        status = db.stage_statuses(list(plan.stages))
        _recompute_missing(plan, db, artifacts, status, result)
        for sid, spec in plan.stages.items():
            if status[sid] != "done" and is_complete(artifacts[sid]):  # finished after the last store write
                try:
                    _finish(db, spec, artifacts[sid], read_marker(artifacts[sid]), adopted=True)
                    status[sid] = "done"
                    result.adopted.append(sid)
                except EditDecayError as exc:
                    log(f"cannot adopt {sid} ({exc}); recomputing it")
        if result.adopted:
            log(f"adopted {len(result.adopted)} finished artifact(s) that were not yet recorded")
        _reopen_transient(plan, db, artifacts, status)
        result.deferred = _deferred(plan, set(skip), status)
        engine = make_backend(backend, work, stage_fns, workers, progress and workers == 1, ray_address)
        try:
            _execute(plan, db, engine, artifacts, status, result, progress, order, budget)
        finally:
            engine.close()
        result.runs = db.refresh_runs()
    result.seconds = time.perf_counter() - started
    return result


def _recompute_missing(plan: Plan, db: Store, artifacts: dict[str, Path], status: dict[str, str],
                       result: RunResult) -> None:
    """A done stage whose artifact is gone (a new machine, a deleted work folder) runs again only when a stage
    still to run reads it: its numbers are in the store, so a finished evaluation, or a fine-tune whose
    evaluations are all done, is never recomputed. Dependants first (reverse plan order), so a recomputed
    stage makes its own inputs needed in turn."""
    readers: dict[str, list[str]] = {sid: [] for sid in plan.stages}
    for sid, spec in plan.stages.items():
        for dep in spec.deps.values():
            readers[dep].append(sid)
    kept = 0
    for sid in reversed(list(plan.stages)):
        if status[sid] != "done" or is_complete(artifacts[sid]):
            continue
        if any(status[r] != "done" for r in readers[sid]):
            log(f"{sid} is recorded done but its artifact {artifacts[sid]} is missing; computing it again")
            db.reset_stage(sid)
            status[sid] = "pending"
            result.missing.append(sid)
        else:
            kept += 1
    if kept:
        log(f"{kept} finished stage(s) have no artifact here; their numbers are in the store and nothing "
            "still to run reads them, so they are not recomputed")


def _finish(db: Store, spec: StageSpec, artifact: Path, outcome: dict[str, Any], adopted: bool = False) -> None:
    evaluation, trajectory, layer_change = read_outputs(spec.kind, artifact)
    if layer_change is not None:  # measured against the model the fine-tune started from: the edit stage's
        layer_change["against"] = spec.deps["model"]
    db.mark_done(spec.stage_id, spec.kind, artifact, outcome.get("seconds"), outcome.get("versions") or {},
                 evaluation=evaluation, trajectory=trajectory, adopted=adopted, cpu_seconds=outcome.get("cpu_seconds"),
                 layer_change=layer_change)


def _execute(plan: Plan, db: Store, engine: Backend, artifacts: dict[str, Path], status: dict[str, str],
             result: RunResult, progress: bool, order: str = "results-first", budget: Budget | None = None) -> None:
    """Submit every ready stage (all inputs done) that fits the budget, in priority order, record outcomes,
    skip what depends on a failure."""
    from tqdm import tqdm

    budget = budget or Budget()
    priority = stage_priority(plan, order)
    todo = sorted((sid for sid in plan.stages if status[sid] == "pending" and sid not in result.deferred),
                  key=priority.__getitem__)
    bar = tqdm(total=len(todo), desc="stages", unit="stage", disable=not progress, dynamic_ncols=True)
    bar.set_postfix_str(f"{sum(1 for s in status.values() if s == 'done')} already done")
    in_flight: set[str] = set()
    blocked: set[str] = set()
    pending = list(todo)
    try:
        while pending or in_flight:
            for sid in list(pending):
                deps = plan.stages[sid].deps.values()
                if any(status[d] == "failed" or d in blocked for d in deps):
                    pending.remove(sid)
                    blocked.add(sid)
                    result.skipped.append(sid)
                    bar.update(1)
                elif (all(status[d] == "done" for d in deps) and len(in_flight) < capacity(engine)
                      and budget.fits(plan.stages[sid], idle=not in_flight)):
                    spec = plan.stages[sid]
                    budget.take(spec)
                    pending.remove(sid)
                    db.mark_running(sid)
                    status[sid] = "running"
                    in_flight.add(sid)
                    log(f"start {sid}")
                    engine.submit(spec, {role: str(artifacts[d]) for role, d in spec.deps.items()}, str(artifacts[sid]))
            if not in_flight:
                if pending:  # cannot happen with a valid DAG; guard against an infinite loop
                    raise EditDecayError(f"stages {pending[:3]} can never run: their inputs are not scheduled")
                break
            for outcome in engine.wait():
                sid = outcome["stage_id"]
                in_flight.discard(sid)
                spec = plan.stages[sid]
                budget.take(spec, sign=-1)
                if outcome["status"] == "done":
                    try:
                        _finish(db, spec, artifacts[sid], outcome)
                        status[sid] = "done"
                        result.executed.append(sid)
                        log(f"done  {sid} ({outcome['seconds']:.1f} s)")
                        _drop_finished_transients(plan, spec, artifacts, status)
                    except EditDecayError as exc:
                        outcome = {**outcome, "status": "failed", "error": str(exc)}
                if outcome["status"] == "failed":
                    db.mark_failed(sid, outcome.get("error") or "unknown error", outcome.get("seconds"),
                                   outcome.get("cpu_seconds"))
                    status[sid] = "failed"
                    result.failed.append(sid)
                    first = (outcome.get("error") or "").splitlines()[0] if outcome.get("error") else ""
                    log(f"FAILED {sid}: {first}")
                bar.update(1)
                db.refresh_runs()
    finally:
        bar.close()


ORDERS = ("results-first", "critical-path")


def stage_priority(plan: Plan, order: str) -> dict[str, tuple[float, ...]]:
    """Per stage, a sort key: ready stages start in increasing key order.

    ``critical-path``: longest remaining chain first (fine-tunes before the evaluations that can wait).
    ``results-first``: stages nothing reads (the evaluations, whose numbers are the results) first, then the
    deepest stage (the longest chain of inputs above it), so a fine-tune is evaluated before another starts;
    ties by the critical path.
    """
    rank = critical_path_seconds(plan)
    if order == "critical-path":
        return {sid: (-rank[sid],) for sid in plan.stages}
    depth: dict[str, int] = {}
    read: set[str] = set()
    for sid, spec in plan.stages.items():  # plan order is topological: inputs come first
        depth[sid] = 1 + max((depth[d] for d in spec.deps.values()), default=0)
        read.update(spec.deps.values())
    return {sid: (int(sid in read), -depth[sid], -rank[sid]) for sid in plan.stages}


def critical_path_seconds(plan: Plan) -> dict[str, float]:
    """Per stage: estimated seconds of the longest chain from its start to the end of the grid (itself included).

    The runner starts ready stages in decreasing order of it (list scheduling on the critical path), so a worker
    that could start an evaluation or a fine-tune starts the fine-tune, whose dependants are still waiting.
    """
    dependants: dict[str, list[str]] = {sid: [] for sid in plan.stages}
    for sid, spec in plan.stages.items():
        for dep in spec.deps.values():
            dependants[dep].append(sid)
    out: dict[str, float] = {}
    for sid in reversed(list(plan.stages)):  # plan order is topological: dependants come later
        out[sid] = planned_stage_seconds(plan, sid) + max((out[d] for d in dependants[sid]), default=0.0)
    return out


def _deferred(plan: Plan, skip: set[str], status: dict[str, str]) -> list[str]:
    """Pending stages of a skipped kind and every pending stage that needs one (plan order is topological)."""
    out: set[str] = set()
    for sid, spec in plan.stages.items():
        if status[sid] == "pending" and (spec.kind in skip or any(d in out for d in spec.deps.values())):
            out.add(sid)
    return [sid for sid in plan.stages if sid in out]


def _dependents(plan: Plan, sid: str) -> list[str]:
    return [other for other, spec in plan.stages.items() if sid in spec.deps.values()]


def _drop_finished_transients(plan: Plan, finished: StageSpec, artifacts: dict[str, Path],
                              status: dict[str, str]) -> None:
    """Once every stage reading a transient full fine-tune is done, its model copy is deleted."""
    for dep in set(finished.deps.values()) | {finished.stage_id}:
        spec = plan.stages[dep]
        if not is_transient(spec) or status.get(dep) != "done" or weights_dropped(artifacts[dep]):
            continue
        if all(status.get(d) == "done" for d in _dependents(plan, dep)):
            freed = drop_weights(artifacts[dep])
            log(f"dropped the weights of {dep} ({freed / 2**20:.0f} MiB): its evaluations are done")


def _reopen_transient(plan: Plan, db: Store, artifacts: dict[str, Path], status: dict[str, str]) -> None:
    """A transient fine-tune whose weights are gone runs again only if a stage reading it is not done."""
    for sid, spec in plan.stages.items():
        if status[sid] == "done" and is_transient(spec) and weights_dropped(artifacts[sid]):
            if any(status[d] != "done" for d in _dependents(plan, sid)):
                log(f"{sid}: its weights were dropped and an evaluation of it is missing; fine-tuning it again")
                db.reset_stage(sid)
                status[sid] = "pending"
