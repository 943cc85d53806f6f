"""The real stage functions: each turns one StageSpec plus its input artifacts into an artifact folder.

Every function has the signature ``fn(spec, inputs, out_dir, ctx) -> dict`` where ``inputs`` maps a dependency
role to its artifact folder, ``out_dir`` is this stage's (content-addressed) artifact folder and the returned
dict goes into the folder's ``_stage.json`` marker. ``{"model": "."}`` means "this folder is a model folder";
``{"model": PATH}`` points elsewhere (a converted registered model). Each function writes its own output
atomically and reuses an output that is already complete, so a stage interrupted after writing its folder
but before being marked done costs nothing on resume.

:mod:`editdecay.experiment.execute` holds the table of these (``STAGE_FUNCTIONS``) and runs one; tests inject
small fakes for machinery tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editdecay.artifacts import (
    ADAPTER,
    DELTAS,
    EVALUATION,
    LAYER_CHANGE,
    MANIFEST,
    MODEL_CONFIG,
    marker_model,
)
from editdecay.errors import DataError
from editdecay.experiment.facts import TINY_PREFIX
from editdecay.experiment.plan import StageSpec
from editdecay.util.io import atomic_dir, atomic_write_json


@dataclass(frozen=True)
class StageContext:
    """What a stage may use beyond its inputs: the shared work folder and whether to draw progress bars."""

    workdir: Path
    progress: bool = False


StageFn = Callable[[StageSpec, dict[str, Path], Path, StageContext], dict[str, Any]]


def _records(spec: StageSpec) -> list:
    from editdecay.data.records import load_edit_records, records_hash

    cfg = spec.config
    records = load_edit_records(cfg["edit_data"], n=cfg["n_edits"])
    if records_hash(records) != cfg["records_hash"]:
        raise DataError(str(cfg["edit_data"]), "the records changed since the grid was planned; run again so the "
                        "stages are re-planned against the current file")
    return records


def run_base(spec: StageSpec, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict[str, Any]:
    """Make the base model available: tiny:<arch> is built and saved here; other names are resolved/converted."""
    name = spec.config["model"]
    if name.startswith(TINY_PREFIX):
        if (out_dir / MODEL_CONFIG).exists():
            return {"model": "."}
        from editdecay.data.corpora import tokenizer_text
        from editdecay.models.tiny import tiny_model, tiny_tokenizer

        size = spec.config.get("tiny", {})
        model, tok = tiny_model(name[len(TINY_PREFIX):], tokenizer=tiny_tokenizer(tokenizer_text()),
                                n_layers=size.get("n_layers", 4),
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
    from editdecay.edit.stats import StatsCache, second_moments, stats_kwargs
    from editdecay.models.arch import get_adapter
    from editdecay.models.registry import load_model

    cfg = spec.config
    model, tok = load_model(marker_model(inputs["model"]), dtype=cfg.get("dtype"))
    with atomic_dir(out_dir) as tmp:
        result = second_moments(model, tok, get_adapter(model), cfg["layers"], **stats_kwargs(cfg),
                                cache=StatsCache(tmp), progress=ctx.progress)
    return {"stats_id": result.stats_id, "n_tokens": result.n_tokens, "keys": result.keys,
            "tokens_per_dim": result.tokens_per_dim, "short": result.short}


def target_pool(ctx: StageContext) -> Path:
    """The work folder's per-request target values: every targets and edit stage of the grid shares them."""
    return ctx.workdir / "targets"


def run_targets(spec: StageSpec, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict[str, Any]:
    """Optimise the target values z of the run's records once, for every update rule that edits them.

    The values go to the work folder's per-request pool (:func:`target_pool`), so a larger edit set reuses the
    requests it shares with a smaller one; the artifact records what was computed.
    """
    from editdecay.edit.hparams import hparams_from_dict
    from editdecay.edit.prompts import Request, context_templates
    from editdecay.edit.targets import compute_targets
    from editdecay.edit.targets_cache import TargetCache
    from editdecay.models.arch import get_adapter
    from editdecay.models.registry import load_model

    cfg = spec.config
    model, tok = load_model(marker_model(inputs["model"]), dtype=cfg.get("dtype"))
    hp = hparams_from_dict("memit", {k: v for k, v in cfg["z"].items() if v is not None})
    templates = context_templates(model, tok, hp.context_template_length_params, cfg["seed"])
    pool = TargetCache(target_pool(ctx))
    before = len(pool)
    requests = [Request.from_record(r) for r in _records(spec)]
    targets = compute_targets(model, tok, get_adapter(model), requests, templates, hp, progress=ctx.progress,
                              cache=pool)
    summary = {"n_requests": len(requests), "computed": len(pool) - before, "layer": targets.layer,
               "target_prob_median": float(sorted(targets.prob)[len(targets.prob) // 2]),
               "target_prob_min": min(targets.prob)}
    with atomic_dir(out_dir) as tmp:
        atomic_write_json(tmp / "targets.json", {**summary, "prob": targets.prob, "steps": targets.steps,
                                                 "templates": templates})
    return summary


def run_edit(spec: StageSpec, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict[str, Any]:
    """Edit the base model with the run's records; the artifact is the edit folder: deltas + manifest (and the
    model copy only when the grid keeps edit models). Its target values come from the targets stage's pool."""
    import warnings

    from editdecay.edit.api import edit_to_folder
    from editdecay.edit.stats import StatsCache, StatsWarning
    from editdecay.edit.targets_cache import TargetCache

    cfg = spec.config
    keep = cfg.get("keep_model", False)
    if (out_dir / MANIFEST).exists() and (out_dir / DELTAS).exists() and (not keep or (out_dir / MODEL_CONFIG).exists()):
        return {"model": ".", "reused": True}
    z_cache = TargetCache(target_pool(ctx)) if "targets" in inputs else False
    with warnings.catch_warnings():  # the statistics stage this edit reads said it once; its manifest keeps it
        warnings.simplefilter("ignore", StatsWarning)
        result = edit_to_folder(marker_model(inputs["model"]), _records(spec), out_dir, cfg["method"],
                                hparams=cfg["hparams"], stats_cache=StatsCache(inputs["stats"]), seed=cfg["seed"],
                                progress=ctx.progress, records_source=cfg["edit_data"], targets_cache=z_cache,
                                deltas_only=not keep, overwrite=True, dtype=cfg.get("dtype"))
    return {"model": ".", "stats_id": result.stats_id}


def run_finetune(spec: StageSpec, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict[str, Any]:
    """Fine-tune the input model; with ``track_edits`` the input is an edit folder whose records are tracked."""
    import shutil

    from editdecay.finetune.api import finetune

    cfg = spec.config
    if out_dir.exists() and not (out_dir / MODEL_CONFIG).exists() and not (out_dir / ADAPTER).exists():
        shutil.rmtree(out_dir)  # a transient fine-tune whose weights were dropped: an evaluation needs them again
    source = marker_model(inputs["model"])
    track = inputs["model"] if cfg["track_edits"] else None
    adapter_only = cfg["finetune"].get("type") != "full" and not cfg.get("keep_model", False)
    preserve = inputs["model"] if cfg["finetune"].get("preserve_strategy", "none") != "none" else None
    finetune(source, cfg["finetune"], out_dir, track_edits=track, progress=ctx.progress, adapter_only=adapter_only,
             preserve_edits=preserve, dtype=cfg.get("dtype"), start_cache=ctx.workdir / "tracking" if track else None)
    if track is not None and not (out_dir / LAYER_CHANGE).exists():
        write_layer_change(track, out_dir)
    return {"model": "."}


def write_layer_change(edit_dir: Path, ft_dir: Path) -> None:
    """Where the fine-tune changed the weights (‖W_ft − W_ed‖/‖W_ed‖ per layer) beside where the edit wrote
    (‖ΔW‖/‖W‖), measured while both are on disk: a full fine-tune's weights are dropped once it is evaluated,
    and adapters do not outlive the machine, so ``editdecay analyze layer-change`` could not measure it later.
    The runner stores it with the stage's other numbers."""
    import math

    from editdecay.analyze.weights import edit_change, finetune_change

    def finite(change: dict[int, float]) -> dict[str, float | None]:
        return {str(layer): value if math.isfinite(value) else None for layer, value in sorted(change.items())}

    edit, edited = edit_change(edit_dir)
    atomic_write_json(ft_dir / LAYER_CHANGE, {"finetune": finite(finetune_change(edit_dir, ft_dir)),
                                              "edit": finite(edit), "edited_layers": sorted(edited)})


def run_evaluate(spec: StageSpec, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict[str, Any]:
    """Evaluate one group's model on the run's records and downstream sample -> evaluation.json."""
    from editdecay.evaluate.api import evaluate_model

    if (out_dir / EVALUATION).exists():
        return {"reused": True}
    cfg = spec.config
    result = evaluate_model(marker_model(inputs["model"]), records=_records(spec), downstream=cfg.get("downstream"),
                            dtype=cfg.get("dtype"),
                            limit=cfg.get("limit"), seed=cfg.get("seed", 0), mode=cfg.get("mode", "loglik"),
                            batch_size=cfg.get("batch_size", 32), progress=ctx.progress,
                            fluency=cfg.get("fluency", False))
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / EVALUATION, result)
    return {}
