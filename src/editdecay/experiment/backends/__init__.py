"""Where stages run: ``local`` (this process or N worker processes) and ``ray`` (a Ray cluster).

Each backend depends on :mod:`editdecay.experiment.execute` (it runs :func:`execute_stage`), never on the
runner; the runner picks one with :func:`make_backend` and drives it through the :class:`Backend` protocol.
It may import experiment.plan, experiment.stages and experiment.execute (and ray, only when asked for).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from editdecay.experiment.plan import StageSpec
from editdecay.experiment.stages import StageFn

BACKENDS = ("local", "ray")


class Backend(Protocol):
    """Where stages run. ``submit`` starts one; ``wait`` returns at least one finished outcome."""

    capacity: int

    def submit(self, spec: StageSpec, inputs: dict[str, str], artifact: str) -> None: ...

    def wait(self) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


def make_backend(backend: str, work: Path, fns: dict[str, StageFn | str] | None, workers: int, progress: bool,
                 ray_address: str | None) -> Backend:
    """The backend named by ``--backend`` (Ray is imported only when asked for)."""
    if backend == "ray":
        from editdecay.experiment.backends.ray import RayBackend

        return RayBackend(work, fns, address=ray_address)
    from editdecay.experiment.backends.local import InProcessBackend, ProcessPoolBackend

    if workers > 1:
        return ProcessPoolBackend(work, fns, workers)
    return InProcessBackend(work, fns, progress)


def capacity(engine: Backend) -> int:
    """How many stages the backend runs at once."""
    return getattr(engine, "capacity", 1)
