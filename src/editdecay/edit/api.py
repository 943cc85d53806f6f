"""Editing API: write facts into a model in place (:func:`edit`) or into an edit folder (:func:`edit_to_folder`).

    from editdecay import api
    model, tok = api.load_model("smollm2-135m")
    records = api.load_edit_records("counterfact", n=100)
    result = api.edit(model, tok, records, method="memit")         # or "alphaedit"
    apply_deltas(model, result.deltas, sign=-1)                      # undo

An edit folder (docs/design.md) is a Hugging Face model folder plus ``deltas.safetensors`` (one float32
tensor per edited weight, stored orientation, ``W_edited = W_base + delta``) and ``manifest.json``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editdecay.artifacts import ALPHAEDIT_STATE, DELTAS, read_deltas, write_deltas, write_edit_manifest
from editdecay.data.records import EditRecord
from editdecay.edit.hooks import model_device
from editdecay.edit.hparams import EditHparams, resolve_hparams
from editdecay.edit.prompts import Request, context_templates
from editdecay.edit.registry import get_method
from editdecay.edit.spread import apply_update
from editdecay.edit.stats import StatsCache, check_stats_settings, second_moments, stats_kwargs
from editdecay.edit.targets import compute_targets
from editdecay.edit.targets_cache import TargetCache, as_cache
from editdecay.errors import ConfigError, DataError
from editdecay.models.arch import get_adapter


@dataclass
class EditResult:
    """What an edit did: the weight deltas (stored orientation, float32) and how they were made."""

    deltas: dict[str, torch.Tensor]
    layers: list[int]
    hparams: EditHparams
    stats_id: str
    timings: dict[str, float]
    method: str = "memit"
    case_ids: list[str] = field(default_factory=list)
    templates: list[list[str]] = field(default_factory=list)
    target_loss: list[float] = field(default_factory=list)
    target_prob: list[float] = field(default_factory=list)
    target_steps: list[int] = field(default_factory=list)
    state: Any = None  # the method's state after the edit (AlphaEdit's), None for a stateless method
    n_batches: int = 1
    statistics: dict[str, Any] = field(default_factory=dict)  # what the second moments were counted from
    # per weight, each batch's exact rank-n factors of ΔW (None where a batch wrote it densely): what the deltas
    # file stores instead of the dense ΔW when smaller (editdecay.deltas)
    factors: dict[str, list[tuple[torch.Tensor, torch.Tensor]] | None] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Small JSON-able facts for manifests and logs."""
        out: dict[str, Any] = {
            "n_edits": len(self.case_ids),
            "n_batches": self.n_batches,
            "target_prob_median": statistics.median(self.target_prob) if self.target_prob else None,
            "target_prob_min": min(self.target_prob) if self.target_prob else None,
            "target_steps_mean": statistics.fmean(self.target_steps) if self.target_steps else None,
            "delta_norms": {name: float(d.norm()) for name, d in self.deltas.items()},
        }
        if self.state is not None:
            out["nullspace_ranks"] = {str(k): v for k, v in self.state.ranks().items()}
        return out


def _as_records(records: Sequence[EditRecord | dict[str, Any]]) -> list[EditRecord]:
    out = []
    for i, rec in enumerate(records):
        if isinstance(rec, EditRecord):
            out.append(rec)
        elif isinstance(rec, dict):
            try:
                out.append(EditRecord.from_dict(rec))
            except TypeError as exc:
                raise DataError("<records>", f"not an EditRecord dict: {exc}", i) from None
        else:
            raise DataError("<records>", f"expected EditRecord or dict, got {type(rec).__name__}", i)
    if not out:
        raise DataError("<records>", "no records to edit")
    return out


def edit(
    model: nn.Module,
    tok: Any,
    records: Sequence[EditRecord | dict[str, Any]],
    method: str = "memit",
    hparams: EditHparams | dict[str, Any] | str | os.PathLike | None = None,
    stats_cache: StatsCache | None | bool = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    *,
    overrides: dict[str, Any] | None = None,
    state: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    targets_cache: TargetCache | str | os.PathLike | bool | None = None,
) -> EditResult:
    """Write ``records`` into ``model`` IN PLACE with a registered method (MEMIT, AlphaEdit) and return the deltas.

    ``hparams``: a dataclass, a dict or a YAML/JSON file, applied over the model's defaults
    (:func:`~editdecay.edit.hparams.default_hparams`); ``overrides`` last. ``stats_cache``: a
    :class:`StatsCache` (default: ``$EDITDECAY_HOME/stats``), or False for none. ``batch_size``: edit
    sequentially in batches of this many records (default: all in one batch); AlphaEdit remembers the keys
    of earlier batches (pass ``state``, the method's state class in :mod:`editdecay.edit.registry`, to continue
    a previous call's sequence). ``targets_cache``: where
    each request's target value z is kept (a :class:`TargetCache` or folder; default ``$EDITDECAY_HOME/targets``;
    False for none): z depends on the model, the request and the z settings but not on the method, so MEMIT and
    AlphaEdit on the same records optimise it once, and a rerun after an interruption resumes instead of
    starting over (the slow part of a large edit; see :func:`editdecay.edit.targets.compute_targets`). ``checkpoint_dir``: a
    target-value folder used instead, when ``targets_cache`` is False.
    """
    t_start = time.perf_counter()
    records = _as_records(records)
    adapter = get_adapter(model)
    hp = resolve_hparams(method, model, hparams, overrides)
    method = hp.method
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if stats_cache is None or stats_cache is True:
        stats_cache = StatsCache.default()
    elif stats_cache is False:
        stats_cache = None
    requests = [Request.from_record(r) for r in records]
    z_cache = as_cache(targets_cache)
    if z_cache is None and checkpoint_dir is not None:
        z_cache = TargetCache(Path(checkpoint_dir))
    log = (lambda msg: print(f"[editdecay edit] {msg}", file=sys.stderr)) if progress else None
    timings: dict[str, float] = {}

    check_stats_settings(**stats_kwargs(hp.to_dict()))  # a bad statistics corpus fails now, not after the targets
    t = time.perf_counter()
    templates = context_templates(model, tok, hp.context_template_length_params, seed)
    timings["templates"] = time.perf_counter() - t

    size = batch_size or len(requests)
    deltas: dict[str, torch.Tensor] = {}
    factors: dict[str, Any] = {}
    losses: list[float] = []
    probs: list[float] = []
    steps: list[int] = []
    n_batches = 0
    stats = rule = None
    timings["targets"] = timings["update"] = 0.0
    for lo in range(0, len(requests), size):
        batch = requests[lo:lo + size]
        n_batches += 1
        t = time.perf_counter()
        targets = compute_targets(model, tok, adapter, batch, templates, hp, progress=progress, cache=z_cache)
        timings["targets"] += time.perf_counter() - t
        if log:
            log(f"batch {n_batches}: target values for {len(batch)} requests in {time.perf_counter() - t:.1f}s, "
                f"median target prob {statistics.median(targets.prob):.3f}")
        if rule is None:  # after the first target values: their backward passes never share memory with d x d
            stats, rule, state = _statistics_and_rule(model, tok, adapter, hp, stats_cache, state, timings, log,
                                                      progress)
        t = time.perf_counter()
        batch_factors: dict[str, Any] = {}
        batch_deltas = apply_update(model, tok, adapter, batch, templates, hp, targets, rule,
                                    progress=progress, log=log, factors=batch_factors)
        timings["update"] += time.perf_counter() - t
        for name, d in batch_deltas.items():
            deltas[name] = deltas[name] + d if name in deltas else d
            pair, kept = batch_factors.get(name), factors.get(name, [])
            factors[name] = kept + [pair] if pair is not None and kept is not None else None
        losses += targets.loss
        probs += targets.prob
        steps += targets.steps
    assert stats is not None  # _as_records refuses an empty list
    timings["total"] = time.perf_counter() - t_start
    return EditResult(
        deltas=deltas, layers=list(hp.layers), hparams=hp, stats_id=stats.stats_id, timings=timings,
        method=method, case_ids=[r.case_id for r in requests], templates=templates, target_loss=losses,
        target_prob=probs, target_steps=steps, state=state, n_batches=n_batches,
        statistics=stats.manifest_fields(), factors=factors,
    )


def _statistics_and_rule(model, tok, adapter, hp, stats_cache, state, timings, log, progress):
    """The second moments of the unedited model and the method's update rule built on them.

    Called once the first batch's target values exist, not before: the d x d statistics (and AlphaEdit's
    projections) then never sit in memory beside the target optimisation's activations, the edit's largest
    allocation (for a 7B model, ~1 GB of float64 per edited layer)."""
    t = time.perf_counter()
    stats = second_moments(model, tok, adapter, hp.layers, **stats_kwargs(hp.to_dict()), cache=stats_cache,
                           progress=progress)
    timings["stats"] = time.perf_counter() - t
    if log:
        cached = f" ({len(stats.from_cache)} of {len(hp.layers)} layers from the cache)" if stats.from_cache else ""
        log(f"second moments for layers {hp.layers}: {timings['stats']:.1f}s{cached}")
    rule, state = get_method(hp.method).build_rule(hp, stats, state=state, device=model_device(model), timings=timings,
                                               log=log)
    return stats, rule, state


def apply_deltas(model: nn.Module, deltas: dict[str, torch.Tensor], sign: int = 1) -> None:
    """``W += sign * delta`` for every saved delta (sign=-1 undoes an edit)."""
    from editdecay.artifacts import apply_deltas as apply

    apply(model, deltas, sign=sign)


def load_deltas(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The deltas of an edit folder (or a deltas.safetensors file)."""
    return read_deltas(path)


def edit_to_folder(
    model_name_or_path: str | os.PathLike,
    records: Sequence[EditRecord | dict[str, Any]],
    out_dir: str | os.PathLike,
    method: str = "memit",
    hparams: EditHparams | dict[str, Any] | str | os.PathLike | None = None,
    stats_cache: StatsCache | None | bool = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    *,
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    records_source: str | None = None,
    model: nn.Module | None = None,
    tok: Any = None,
    targets_cache: TargetCache | str | os.PathLike | bool | None = None,
    deltas_only: bool = False,
    device: Any = None,
    dtype: Any = None,
) -> EditResult:
    """Load the model, edit it, and write ``out_dir`` (model folder + deltas + manifest) atomically.

    ``deltas_only``: write only the deltas and the manifest (a few MB instead of a model copy); every command
    that takes a model folder loads such a folder as base + deltas. Finished target values are kept in the
    target-value cache (``targets_cache``; with False, in ``.<out_dir name>.checkpoint`` beside ``out_dir``
    until the folder is written), so rerunning the same command after an interruption resumes the edit.
    ``device``/``dtype`` (e.g. "cuda", "bfloat16"): where and in what precision the model is loaded (a passed
    ``model`` is moved/cast); the editing maths stays float32/float64 on that device.
    """
    from editdecay.models.registry import load_model, resolve_model
    from editdecay.util.io import atomic_dir

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir} exists and is not empty; pass --overwrite (overwrite=True) to replace it")
    records = _as_records(records)
    if model is None:
        model, tok = load_model(model_name_or_path, device=device, dtype=dtype)
    elif tok is None:
        raise ConfigError("pass tok together with model")
    elif device is not None or dtype is not None:
        from editdecay.models.device import resolve_device, resolve_dtype

        model.to(device=resolve_device(device) if device is not None else None,
                 dtype=resolve_dtype(dtype) if dtype is not None else None)
    checkpoint_dir = out_dir.parent / f".{out_dir.name}.checkpoint"
    result = edit(model, tok, records, method=method, hparams=hparams, stats_cache=stats_cache,
                  batch_size=batch_size, seed=seed, progress=progress, overrides=overrides,
                  checkpoint_dir=checkpoint_dir, targets_cache=targets_cache)
    t = time.perf_counter()
    try:
        resolved = resolve_model(model_name_or_path)
        resolved = str(resolved.resolve()) if isinstance(resolved, Path) else str(resolved)
    except Exception:  # noqa: BLE001 - a hub id or a model passed in: record the name as given
        resolved = str(model_name_or_path)
    with atomic_dir(out_dir) as tmp:
        if not deltas_only:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        write_deltas(tmp / DELTAS, result.deltas, factors=result.factors)
        if result.state is not None:
            result.state.save(tmp / ALPHAEDIT_STATE)
        result.timings["save"] = time.perf_counter() - t
        write_edit_manifest(
            tmp, deltas_only=deltas_only, method=result.method, base_model=str(model_name_or_path),
            base_model_path=resolved, records=records, records_source=records_source, layers=result.layers,
            hparams=result.hparams.to_dict(), stats_id=result.stats_id, statistics=result.statistics,
            timings=result.timings, seed=seed, dtype=next(model.parameters()).dtype, batch_size=batch_size,
            deltas=result.deltas, context_templates=result.templates, summary=result.summary(),
        )
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return result
