"""The real stage functions: each turns one StageSpec plus its input artifacts into an artifact folder.

Every function has the signature ``fn(spec, inputs, out_dir, ctx) -> dict`` where ``inputs`` maps a dependency
role to its artifact folder, ``out_dir`` is this stage's (content-addressed) artifact folder and the returned
dict goes into the folder's ``_stage.json`` marker. ``{"model": "."}`` means "this folder is a model folder";
``{"model": PATH}`` points elsewhere (a converted registered model). Each function writes its own output
atomically and reuses an output that is already complete, so a stage interrupted after writing its folder
but before being marked done costs nothing on resume.

The runner takes a table of these (``STAGE_FUNCTIONS``), so tests can inject small fakes for machinery tests.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editdecay.errors import ConfigError, DataError
from editdecay.experiment.grid import TINY_PREFIX, StageSpec
from editdecay.util.io import atomic_dir, atomic_write_json, read_json, stable_hash

MARKER = "_stage.json"
EVALUATION = "evaluation.json"


@dataclass(frozen=True)
class StageContext:
    """What a stage may use beyond its inputs: the shared work folder and whether to draw progress bars."""

    workdir: Path
    progress: bool = False


StageFn = Callable[[StageSpec, dict[str, Path], Path, StageContext], dict[str, Any]]


def model_source(artifact: Path) -> str:
    """The model a (base/edit/finetune) artifact stands for: the folder itself or the path its marker names."""
    marker = read_json(artifact / MARKER)
    model = marker.get("model")
    if model is None:
        raise ConfigError(f"{artifact / MARKER}: stage artifact does not name a model")
    return str(artifact) if model == "." else str(model)


def _records(spec: StageSpec) -> list:
    from editdecay.data.records import load_edit_records

    cfg = spec.config
    records = load_edit_records(cfg["edit_data"], n=cfg["n_edits"])
    if stable_hash([r.to_dict() for r in records]) != cfg["records_hash"]:
        raise DataError(str(cfg["edit_data"]), "the records changed since the grid was planned; run again so the "
                        "stages are re-planned against the current file")
    return records


def run_base(spec: StageSpec, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict[str, Any]:
    """Make the base model available: tiny:<arch> is built and saved here; other names are resolved/converted."""
    name = spec.config["model"]
    if name.startswith(TINY_PREFIX):
        if (out_dir / "config.json").exists():
            return {"model": "."}
        from editdecay.models.tiny import tiny_model

        size = spec.config.get("tiny", {})
        model, tok = tiny_model(name[len(TINY_PREFIX):], n_layers=size.get("n_layers", 4),
                                d_model=size.get("d_model", 64), seed=0)
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
        return {"model": "."}
    from editdecay.models.registry import resolve_model

    out_dir.mkdir(parents=True, exist_ok=True)
    return {"model": str(resolve_model(name))}


def run_stats(spec: StageSpec, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict[str, Any]:
    """Second moments of the edit layers' keys, computed once and shared by every edit that uses them.

    The artifact folder is the edit stage's StatsCache, so an edit reading it finds every layer cached.
    """
    from editdecay.edit.stats import StatsCache, second_moments
    from editdecay.models.arch import get_adapter
    from editdecay.models.registry import load_model

    cfg = spec.config
    model, tok = load_model(model_source(inputs["model"]))
    with atomic_dir(out_dir) as tmp:
        result = second_moments(model, tok, get_adapter(model), cfg["layers"], corpora=cfg["mom2_dataset"],
                                n_tokens=cfg["mom2_n_tokens"], seq_len=cfg["mom2_seq_len"],
                                accum_dtype=cfg["mom2_dtype"], cache=StatsCache(tmp), progress=ctx.progress)
    return {"stats_id": result.stats_id, "n_tokens": result.n_tokens, "keys": result.keys}


def run_edit(spec: StageSpec, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict[str, Any]:
    """Edit the base model with the run's records; the edit folder (model + deltas + manifest) is the artifact."""
    from editdecay.edit.api import edit_to_folder
    from editdecay.edit.stats import StatsCache

    if (out_dir / "manifest.json").exists() and (out_dir / "config.json").exists():
        return {"model": ".", "reused": True}
    cfg = spec.config
    result = edit_to_folder(model_source(inputs["model"]), _records(spec), out_dir, cfg["method"],
                            hparams=cfg["hparams"], stats_cache=StatsCache(inputs["stats"]), seed=cfg["seed"],
                            progress=ctx.progress, records_source=cfg["edit_data"])
    return {"model": ".", "stats_id": result.stats_id}


def run_finetune(spec: StageSpec, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict[str, Any]:
    """Fine-tune the input model; with ``track_edits`` the input is an edit folder whose records are tracked."""
    from editdecay.finetune.api import finetune

    cfg = spec.config
    source = model_source(inputs["model"])
    track = inputs["model"] if cfg["track_edits"] else None
    finetune(source, cfg["finetune"], out_dir, track_edits=track, progress=ctx.progress)
    return {"model": "."}


def run_evaluate(spec: StageSpec, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict[str, Any]:
    """Evaluate one group's model on the run's records and downstream sample -> evaluation.json."""
    from editdecay.evaluate.api import evaluate_model

    if (out_dir / EVALUATION).exists():
        return {"reused": True}
    cfg = spec.config
    result = evaluate_model(model_source(inputs["model"]), records=_records(spec), downstream=cfg.get("downstream"),
                            limit=cfg.get("limit"), seed=cfg.get("seed", 0), mode=cfg.get("mode", "loglik"),
                            batch_size=cfg.get("batch_size", 32), progress=ctx.progress,
                            fluency=cfg.get("fluency", False))
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / EVALUATION, result)
    return {}


STAGE_FUNCTIONS: dict[str, StageFn] = {
    "base": run_base,
    "stats": run_stats,
    "edit": run_edit,
    "finetune": run_finetune,
    "evaluate": run_evaluate,
}


def read_outputs(kind: str, artifact: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """(evaluation dict, trajectory list) that the store ingests from a finished artifact."""
    evaluation = trajectory = None
    if kind == "evaluate":
        path = artifact / EVALUATION
        if not path.exists():
            raise DataError(str(path), "evaluation stage finished without writing its evaluation JSON")
        evaluation = read_json(path)
    elif kind == "finetune" and (artifact / "trajectory.json").exists():
        raw = read_json(artifact / "trajectory.json")
        trajectory = raw if isinstance(raw, list) else raw.get("points", []) if isinstance(raw, dict) else None
    return evaluation, trajectory


def log(message: str) -> None:
    print(f"[editdecay] {message}", file=sys.stderr, flush=True)
