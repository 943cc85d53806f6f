"""`--backend local`: stages in this process (``workers=1``) or in N spawned worker processes.

Depends on :mod:`editdecay.experiment.execute` (what a worker runs) and nothing above it.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from editdecay.errors import ConfigError
from editdecay.experiment.execute import execute_stage
from editdecay.experiment.plan import StageSpec
from editdecay.experiment.stages import StageFn


class InProcessBackend:
    """Runs each stage immediately in this process (the default: simplest, no pickling)."""

    capacity = 1

    def __init__(self, workdir: Path, fns: dict[str, StageFn | str] | None, progress: bool):
        self.workdir, self.fns, self.progress = workdir, fns, progress
        self.done: list[dict[str, Any]] = []

    def submit(self, spec: StageSpec, inputs: dict[str, str], artifact: str) -> None:
        self.done.append(execute_stage(spec.to_dict(), inputs, artifact, str(self.workdir), self.fns, self.progress))

    def wait(self) -> list[dict[str, Any]]:
        out, self.done = self.done, []
        return out

    def close(self) -> None:
        pass


def _worker_init() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class ProcessPoolBackend:
    """N spawned worker processes; a worker that dies (OOM, segfault) fails only its stage."""

    def __init__(self, workdir: Path, fns: dict[str, StageFn | str] | None, workers: int):
        import multiprocessing

        for kind, fn in (fns or {}).items():
            if not isinstance(fn, str) and getattr(fn, "__module__", "").startswith(("test", "__main__")):
                raise ConfigError(f"stage function for {kind!r} must be importable ('module:function') "
                                  "to run in worker processes")
        self.workdir, self.fns, self.capacity = workdir, fns, workers
        self.ctx = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=self.ctx, initializer=_worker_init)
        self.futures: dict[Future, str] = {}

    def submit(self, spec: StageSpec, inputs: dict[str, str], artifact: str) -> None:
        fut = self.pool.submit(execute_stage, spec.to_dict(), inputs, artifact, str(self.workdir), self.fns, False)
        self.futures[fut] = spec.stage_id

    def wait(self) -> list[dict[str, Any]]:
        done, _ = wait(list(self.futures), return_when=FIRST_COMPLETED)
        out = []
        for fut in done:
            stage_id = self.futures.pop(fut)
            try:
                out.append(fut.result())
            except Exception as exc:  # BrokenProcessPool: the worker died; record it and start a fresh pool
                out.append({"stage_id": stage_id, "status": "failed", "seconds": None,
                            "error": f"worker process died: {type(exc).__name__}: {exc}"})
                if self.pool._broken:  # type: ignore[attr-defined]
                    self.pool = ProcessPoolExecutor(max_workers=self.capacity, mp_context=self.ctx,
                                                    initializer=_worker_init)
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
