"""Run one stage where it is scheduled (this process, a worker process, a Ray task): :func:`execute_stage`.

A stage counts as finished only when its artifact folder is complete — the stage function writes it
atomically, then :func:`execute_stage` atomically writes the ``_stage.json`` marker — and the driver has
recorded it in the store (:mod:`editdecay.experiment.runner`). :data:`STAGE_FUNCTIONS` maps each stage kind
to its function (:mod:`editdecay.experiment.stages`); callers may replace entries (machinery tests).

Imports the plan (StageSpec) and the stage functions; the backends import this, never the other way round.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from editdecay.artifacts import EVALUATION, LAYER_CHANGE, MARKER, read_trajectory, write_marker
from editdecay.errors import ConfigError, DataError
from editdecay.experiment.plan import StageSpec
from editdecay.experiment.stages import (
    StageContext,
    StageFn,
    run_base,
    run_edit,
    run_evaluate,
    run_finetune,
    run_stats,
    run_targets,
)
from editdecay.util.env import library_versions
from editdecay.util.io import read_json

STAGE_FUNCTIONS: dict[str, StageFn] = {
    "base": run_base,
    "stats": run_stats,
    "targets": run_targets,
    "edit": run_edit,
    "finetune": run_finetune,
    "evaluate": run_evaluate,
}


def artifact_path(workdir: Path, spec: StageSpec) -> Path:
    """Where a stage's artifact folder lives in the work folder: ``stages/<kind>/<stage id>``."""
    return workdir / "stages" / spec.kind / spec.stage_id


def is_complete(artifact: Path) -> bool:
    """A finished stage's folder: its marker is written last."""
    return (artifact / MARKER).exists()


def resolve_fns(fns: dict[str, StageFn | str] | None) -> dict[str, StageFn]:
    """A table of stage functions; entries may be callables or 'module:function' strings (for worker processes)."""
    import importlib

    table = dict(STAGE_FUNCTIONS)
    for kind, fn in (fns or {}).items():
        if isinstance(fn, str):
            module, _, attr = fn.partition(":")
            fn = getattr(importlib.import_module(module), attr)
        table[kind] = fn
    return table


def execute_stage(spec_dict: dict[str, Any], inputs: dict[str, str], artifact: str, workdir: str,
                  fns: dict[str, StageFn | str] | None = None, progress: bool = False) -> dict[str, Any]:
    """Run one stage where it is scheduled (this process, a worker, a Ray task) -> an outcome dict.

    Torch uses exactly the stage's ``num_cpus`` threads everywhere, so every backend computes the same numbers.
    Never raises for a stage's own error: the outcome carries it, so the driver can record it and go on.
    """
    spec = StageSpec.from_dict(spec_dict)
    out = Path(artifact)
    start, cpu_start = time.perf_counter(), time.process_time()
    import torch
    from transformers.utils import logging as hf_logging

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(spec.resources.get("num_cpus", 1) or 1)))
    device_before = os.environ.get("EDITDECAY_DEVICE")
    if spec.resources.get("device"):  # the grid's `device:` (not part of any stage id)
        os.environ["EDITDECAY_DEVICE"] = str(spec.resources["device"])
    bars = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        fn = resolve_fns(fns).get(spec.kind)
        if fn is None:
            raise ConfigError(f"no stage function for kind {spec.kind!r}")
        info = fn(spec, {role: Path(p) for role, p in inputs.items()}, out, StageContext(Path(workdir), progress))
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        versions = library_versions()
        write_marker(out, {"stage_id": spec.stage_id, "kind": spec.kind, "config": spec.config, "deps": spec.deps,
                           "seconds": seconds, "cpu_seconds": cpu_seconds, "finished_at": time.time(),
                           "versions": versions, "pid": os.getpid(), **(info or {})})
        return {"stage_id": spec.stage_id, "status": "done", "seconds": seconds, "cpu_seconds": cpu_seconds,
                "versions": versions}
    except Exception as exc:  # a stage's failure is data: recorded with its error, the grid goes on
        tb = traceback.format_exc(limit=8)
        return {"stage_id": spec.stage_id, "status": "failed", "seconds": time.perf_counter() - start,
                "cpu_seconds": time.process_time() - cpu_start, "error": f"{type(exc).__name__}: {exc}\n{tb}"}
    finally:
        torch.set_num_threads(threads)
        if spec.resources.get("device"):
            if device_before is None:
                os.environ.pop("EDITDECAY_DEVICE", None)
            else:
                os.environ["EDITDECAY_DEVICE"] = device_before
        if bars:
            hf_logging.enable_progress_bar()


def read_outputs(kind: str, artifact: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None,
                                                  dict[str, Any] | None]:
    """(evaluation dict, trajectory list, per-layer weight change) that the store ingests from a finished
    artifact; the layer change only from fine-tunes of an edited model that measured it."""
    evaluation = trajectory = layer_change = None
    if kind == "evaluate":
        path = artifact / EVALUATION
        if not path.exists():
            raise DataError(str(path), "evaluation stage finished without writing its evaluation JSON")
        evaluation = read_json(path)
    elif kind == "finetune":
        trajectory = read_trajectory(artifact)
        if (artifact / LAYER_CHANGE).exists():
            layer_change = read_layer_change(artifact / LAYER_CHANGE)
    return evaluation, trajectory, layer_change


def read_layer_change(path: Path) -> dict[str, Any]:
    """``layer_change.json`` with its layer keys as integers, or a DataError naming the field."""
    try:
        raw = read_json(path)
    except (OSError, ValueError) as exc:
        raise DataError(str(path), f"not valid JSON ({exc})") from None
    try:
        return {"finetune": {int(k): v for k, v in raw["finetune"].items()},
                "edit": {int(k): v for k, v in raw["edit"].items()},
                "edited_layers": [int(layer) for layer in raw["edited_layers"]]}
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise DataError(str(path), f"expected 'finetune' and 'edit' ({{layer index: change}}) and 'edited_layers' "
                        f"([layer index, ...]); problem: {exc}") from None


def log(message: str) -> None:
    print(f"[editdecay] {message}", file=sys.stderr, flush=True)
