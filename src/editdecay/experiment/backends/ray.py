"""`--backend ray`: each stage becomes a Ray task with its resource needs, on the cluster at RAY_ADDRESS.

Depends on :mod:`editdecay.experiment.execute` (what a task runs) and nothing above it. Why driver-side
dependency handling: the runner submits a stage only once all its inputs are done, so a
failed input never launches its dependants, and the driver (the only store writer) sees every outcome.
Artifacts are written by the tasks into the work folder, which must be a path every node shares (NFS, a
mounted bucket); the store stays on the driver. Without RAY_ADDRESS (or ``address``), a local Ray instance is
started for this run and stopped afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from editdecay.errors import ConfigError, EditDecayError
from editdecay.experiment.execute import execute_stage
from editdecay.experiment.plan import StageSpec
from editdecay.experiment.stages import StageFn


class RayBackend:
    """Submits stages as Ray tasks; ``wait`` returns the outcomes of finished tasks."""

    capacity = 1 << 30  # Ray queues tasks until resources free up

    def __init__(self, workdir: Path, fns: dict[str, StageFn | str] | None, address: str | None = None,
                 num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise EditDecayError("--backend ray needs Ray: pip install 'editdecay[ray]'") from None
        for kind, fn in (fns or {}).items():
            if not isinstance(fn, str):
                raise ConfigError(f"stage function for {kind!r} must be given as 'module:function' to run on Ray")
        self.ray = ray
        self.workdir, self.fns = workdir, fns
        address = address or os.environ.get("RAY_ADDRESS") or None
        self.started_here = not ray.is_initialized()
        if self.started_here:
            kwargs: dict[str, Any] = {"address": address, "log_to_driver": False, "include_dashboard": False}
            if address is None:
                kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise EditDecayError(f"cannot connect to the Ray cluster at {address or 'a new local instance'}: "
                                     f"{exc}") from None
        self.task = ray.remote(execute_stage)
        self.refs: dict[Any, str] = {}

    def options(self, spec: StageSpec) -> dict[str, Any]:
        """Ray resource request of one stage: num_cpus, num_gpus, memory (bytes)."""
        res = spec.resources
        opts: dict[str, Any] = {"num_cpus": float(res.get("num_cpus", 1)), "num_gpus": float(res.get("num_gpus", 0)),
                                "max_retries": 0, "name": spec.stage_id}
        if res.get("memory_gb"):
            opts["memory"] = int(float(res["memory_gb"]) * 2**30)
        return opts

    def submit(self, spec: StageSpec, inputs: dict[str, str], artifact: str) -> None:
        ref = self.task.options(**self.options(spec)).remote(spec.to_dict(), inputs, artifact, str(self.workdir),
                                                             self.fns, False)
        self.refs[ref] = spec.stage_id

    def wait(self) -> list[dict[str, Any]]:
        ready, _ = self.ray.wait(list(self.refs), num_returns=1)
        out = []
        for ref in ready:
            stage_id = self.refs.pop(ref)
            try:
                out.append(self.ray.get(ref))
            except Exception as exc:  # the task's worker died (OOM kill, node lost): fail only this stage
                out.append({"stage_id": stage_id, "status": "failed", "seconds": None,
                            "error": f"Ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"})
        return out

    def close(self) -> None:
        for ref in list(self.refs):
            self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.started_here:
            self.ray.shutdown()
