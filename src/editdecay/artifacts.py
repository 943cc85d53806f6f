"""The artifact folders the stages write, and how a small one becomes a model again.

An edit folder is *full* (a Hugging Face model folder plus ``deltas.safetensors`` and ``manifest.json``) or
*deltas-only* (``deltas.safetensors`` + ``manifest.json``, a few MB: the base is named in the manifest). The
deltas file holds each ΔW dense or as its exact low-rank factors (:mod:`editdecay.deltas`). A
fine-tune folder is *merged* (a model folder plus ``manifest.json`` and, for LoRA/DoRA, ``adapter/``) or
*adapter-only* (``adapter/`` + ``manifest.json``; the model it was trained from is named in the manifest, and
may itself be a deltas-only edit folder). Every command that takes ``--model`` accepts all four: a small folder
is materialised as base + deltas or base + merged adapter, the same weights the full form would hold.

A grid stage's folder also holds ``_stage.json`` (:data:`MARKER`), written last: the stage is finished, and
``model`` names the model the folder stands for (``"."`` = the folder itself).

This module knows the file names and manifest fields: it is their typed reader (every reader's error names the
file and the field) and the writer of the edit folder's deltas and manifest, of the fine-tune folder's manifest,
of the erase output folder's manifest (its contract checked) and of the stage marker. It imports nothing from the
stages (models/ calls it).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from editdecay.errors import ConfigError, DataError, ModelError

MANIFEST = "manifest.json"
DELTAS = "deltas.safetensors"
ALPHAEDIT_STATE = "alphaedit_state.safetensors"  # AlphaEdit's projection and earlier keys (edit folder)
ADAPTER = "adapter"
MODEL_CONFIG = "config.json"
TRAIN_LOG = "train_log.jsonl"  # fine-tune folder: one JSON line per logged step
TRAJECTORY = "trajectory.json"  # fine-tune folder with tracking: [{"step", "efficacy", ...}]
EDIT_SCORES = "edit_scores.json"  # fine-tune folder with tracking: the last step's per-record scores (reused)
REEDIT_DELTAS = "preserve_reedit_deltas.safetensors"  # fine-tune folder, preserve_strategy=reedit: the re-edit
MARKER = "_stage.json"  # grid stage folder: written last, once the stage is finished
EVALUATION = "evaluation.json"  # grid evaluate stage: the evaluation JSON
LAYER_CHANGE = "layer_change.json"  # grid fine-tune of an edited model: per-layer weight change, fine-tune and edit
FINETUNE_FORMS = ("model", "adapter")  # a fine-tune manifest's "form": merged weights beside it, or adapter only


def read_manifest(folder: str | os.PathLike, stage: str | None = None) -> dict[str, Any]:
    """``folder/manifest.json`` (or ``folder`` itself when it is a JSON file) as a dict; errors name the file and
    the field that is wrong."""
    path = Path(folder)
    path = path if path.suffix == ".json" and not path.is_dir() else path / MANIFEST
    if not path.exists():
        raise DataError(str(path), "not found: the folder is not an edit or fine-tune folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(str(path), f"not readable JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise DataError(str(path), "must hold a JSON object")
    if stage is not None and manifest.get("stage") != stage:
        raise DataError(str(path), f"is a {manifest.get('stage')!r} manifest, expected {stage!r}", field="stage")
    return manifest


def _read_object(path: Path, missing: str) -> dict[str, Any]:
    if not path.exists():
        raise DataError(str(path), missing)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(str(path), f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(str(path), "expected a JSON object")
    return data


def is_edit_folder(folder: str | os.PathLike) -> bool:
    """A folder holding an edit manifest (``"stage": "edit"``)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return False
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("stage") == "edit"


def read_edit_manifest(folder: str | os.PathLike, missing: str | None = None) -> dict[str, Any]:
    """An edit folder's manifest, checked: ``stage`` (edit, when given), ``layers`` (integers), ``records`` (a list).

    ``missing`` is the message when there is no manifest (what the caller needed the edit folder for).
    """
    path = Path(folder) / MANIFEST
    manifest = _read_object(path, missing or "no edit manifest here: pass an edit folder written by `editdecay edit`")
    if manifest.get("stage", "edit") != "edit":
        raise DataError(str(path), f"not an edit manifest (expected \"stage\": \"edit\", got {manifest['stage']!r})",
                        field="stage")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in layers):
        raise DataError(str(path), "expected a list of integer layer indices", field="layers")
    if not isinstance(manifest.get("records", []), list):
        raise DataError(str(path), "expected a list of edit records", field="records")
    return manifest


def edited_layers(manifest: dict[str, Any]) -> list[int]:
    """THE edited layers of an edit manifest: its ``layers``, sorted, each once."""
    return sorted(set(manifest.get("layers") or []))


def edited_selection(word: str, edited: list[int], n_layers: int) -> list[int]:
    """THE meaning of the fine-tuning selections 'edited' and 'non-edited' given the edited layers: those layers
    (sorted, each once) or every other layer of the model (used by planning and by fine-tuning alike)."""
    layers = sorted(set(edited))
    if word == "edited":
        return layers
    if word == "non-edited":
        return [i for i in range(n_layers) if i not in set(layers)]
    raise ValueError(f"not a word selection: {word!r} (expected 'edited' or 'non-edited')")


# ----------------------------------------------------------------------------------------------------------
# edit folders: the writers


def write_deltas(path: str | os.PathLike, deltas: dict[str, Any], factors: dict[str, Any] | None = None) -> None:
    """A deltas file (an edit folder's ``deltas.safetensors``, a re-edit's :data:`REEDIT_DELTAS`), written
    atomically: one entry per rewritten weight, keyed by its full parameter name, the dense float32 ΔW or, where
    smaller, the exact factors of each batch's update (``factors``; :mod:`editdecay.deltas`)."""
    from editdecay.deltas import save_deltas

    save_deltas(path, deltas, factors)


def read_deltas(path: str | os.PathLike) -> dict[str, Any]:
    """The deltas of an edit folder (or of a deltas file): {parameter name: dense float32 ΔW}."""
    from editdecay.deltas import load_deltas_file

    path = Path(path)
    return load_deltas_file(path / DELTAS if path.is_dir() else path)


def write_edit_manifest(
    folder: str | os.PathLike,
    *,
    deltas_only: bool,
    method: str,
    base_model: str,
    base_model_path: str,
    records: list[Any],
    records_source: str | None,
    layers: list[int],
    hparams: dict[str, Any],
    stats_id: str,
    statistics: dict[str, Any],
    timings: dict[str, float],
    seed: int,
    dtype: Any,
    batch_size: int | None,
    deltas: dict[str, Any],
    context_templates: list[list[str]],
    summary: dict[str, Any],
) -> dict[str, Any]:
    """Write ``folder/manifest.json`` of an edit folder (docs/design.md's fields, in this order) atomically and
    return it. ``records`` are EditRecords (stored as their dicts), ``deltas`` the tensors written beside it (the
    manifest keeps their shapes), ``dtype`` the model's (``torch.float32`` or its name)."""
    from editdecay.util.env import library_versions
    from editdecay.util.io import atomic_write_json

    manifest = {
        "stage": "edit",
        "form": "deltas" if deltas_only else "full",
        "method": method,
        "base_model": base_model,
        "base_model_path": base_model_path,
        "records": [r.to_dict() for r in records],
        "records_source": records_source,
        "layers": layers,
        "hparams": hparams,
        "stats_id": stats_id,
        "statistics": statistics,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "versions": library_versions(),
        "seed": seed,
        "dtype": str(dtype).replace("torch.", ""),
        "n_edits": len(records),
        "batch_size": batch_size,
        "deltas": {name: list(d.shape) for name, d in deltas.items()},
        "context_templates": context_templates,
        "summary": summary,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_json(Path(folder) / MANIFEST, manifest)
    return manifest


# ----------------------------------------------------------------------------------------------------------
# fine-tune folders: the manifest


def write_finetune_manifest(
    folder: str | os.PathLike,
    *,
    type: str,
    layers: list[int],
    modules: list[str],
    target_modules: list[str],
    trained: list[tuple[str, int]],
    trained_per_layer: dict[str, int],
    base_model: str,
    edit_manifest: str | None,
    tracked_records: int,
    data: str,
    n_examples: int,
    config: dict[str, Any],
    learning_rate: float,
    run_hash: str,
    identity: dict[str, Any],
    steps: int,
    resumed_from: int | None,
    tokens: int,
    loss_tokens: int,
    final_loss: float | None,
    train_seconds: float,
    total_seconds: float,
    seed: int,
    dtype: Any,
    tracked: bool,
    form: str,
    preserve: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``folder/manifest.json`` of a fine-tune folder (docs/design.md's fields, in this order) atomically and
    return it. ``trained`` is the trained parameters as (name, number of scalars), ``trained_per_layer`` their
    counts per layer; ``tracked``: the folder holds :data:`TRAJECTORY`; ``form`` is 'model' (merged weights
    beside it) or 'adapter' (adapter only); ``preserve`` the preserve strategy's record, when one ran."""
    from editdecay.util.env import library_versions
    from editdecay.util.io import atomic_write_json

    if form not in FINETUNE_FORMS:
        raise ValueError(f"fine-tune folder form {form!r}: expected one of {', '.join(FINETUNE_FORMS)}")
    manifest: dict[str, Any] = {
        "stage": "finetune",
        "type": type,
        "layers": layers,
        "modules": modules,
        "target_modules": target_modules,
        "trained_parameters": trained_per_layer,
        "trained_parameter_names": [name for name, _ in trained],
        "n_trained": sum(n for _, n in trained),
        "base_model": base_model,
        "edit_manifest": edit_manifest,
        "tracked_records": tracked_records,
        "data": data,
        "n_examples": n_examples,
        "config": config,
        "learning_rate": learning_rate,
        "run_hash": run_hash,
        "identity": identity,
        "steps": steps,
        "resumed_from": resumed_from,
        "tokens": tokens,
        "loss_tokens": loss_tokens,
        "final_loss": final_loss,
        "timings": {"train_seconds": train_seconds, "tokens_per_s": tokens / train_seconds if train_seconds else None,
                    "total_seconds": total_seconds},
        "versions": library_versions(),
        "seed": seed,
        "dtype": str(dtype).replace("torch.", ""),
        "trajectory": TRAJECTORY if tracked else None,
        "form": form,
    }
    if preserve is not None:
        manifest["preserve"] = preserve
    atomic_write_json(Path(folder) / MANIFEST, manifest)
    return manifest


def read_finetune_manifest(folder: str | os.PathLike, missing: str | None = None) -> dict[str, Any]:
    """A fine-tune folder's manifest, checked: ``stage`` (finetune), ``layers`` (integers), ``form`` (model or
    adapter, when given), ``base_model`` and ``run_hash`` (text). ``missing``: the message when there is none."""
    path = Path(folder) / MANIFEST
    manifest = _read_object(path, missing or "no fine-tune manifest here: pass a folder written by `editdecay finetune`")
    if manifest.get("stage") != "finetune":
        raise DataError(str(path), f"not a fine-tune manifest (expected \"stage\": \"finetune\", got "
                        f"{manifest.get('stage')!r})", field="stage")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in layers):
        raise DataError(str(path), "expected a list of integer layer indices", field="layers")
    if manifest.get("form", "model") not in FINETUNE_FORMS:
        raise DataError(str(path), f"expected one of {', '.join(FINETUNE_FORMS)}, got {manifest['form']!r}",
                        field="form")
    for key in ("base_model", "run_hash"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            raise DataError(str(path), "expected text", field=key)
    return manifest


# ----------------------------------------------------------------------------------------------------------
# erase folders: the manifest


def write_erase_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``folder/manifest.json`` of an erase output folder (docs/erase.md) atomically, as given, and return it,
    after checking its contract (errors name the file and the field): ``stage`` "erase", ``located_layers`` a
    list of integers, and ``erased`` / ``still_holding`` counts whenever records were given (``records_source``)
    or either is present. The other fields depend on the mode and strategy and are written in the caller's order."""
    from editdecay.util.io import atomic_write_json

    path = Path(folder) / MANIFEST
    if manifest.get("stage") != "erase":
        raise DataError(str(path), f"expected \"stage\": \"erase\", got {manifest.get('stage')!r}", field="stage")
    located = manifest.get("located_layers")
    if not isinstance(located, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in located):
        raise DataError(str(path), f"expected a list of integer layer indices, got {located!r}",
                        field="located_layers")
    counted = manifest.get("records_source") is not None or "erased" in manifest or "still_holding" in manifest
    for key in ("erased", "still_holding") if counted else ():
        value = manifest.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(str(path), f"expected a count of edits (an integer >= 0), got {value!r}", field=key)
    atomic_write_json(path, manifest)
    return manifest


# ----------------------------------------------------------------------------------------------------------
# grid stage folders: the marker


def read_marker(artifact: str | os.PathLike) -> dict[str, Any]:
    """A stage folder's ``_stage.json``."""
    return _read_object(Path(artifact) / MARKER, "no stage marker: the stage has not finished")


def write_marker(artifact: str | os.PathLike, marker: dict[str, Any]) -> None:
    """Write a stage folder's ``_stage.json`` atomically: the last write of a finished stage."""
    from editdecay.util.io import atomic_write_json

    artifact = Path(artifact)
    artifact.mkdir(parents=True, exist_ok=True)
    atomic_write_json(artifact / MARKER, marker)


def marker_model(artifact: str | os.PathLike) -> str:
    """The model a (base/edit/finetune) stage folder stands for: the folder itself or the path its marker names."""
    artifact = Path(artifact)
    marker = read_marker(artifact)
    if marker.get("weights") == "dropped":
        raise ConfigError(f"{artifact}: this full fine-tune's weights were not kept once its evaluations were done; "
                          "add `keep: [finetune]` to the grid and run it again to keep them")
    model = marker.get("model")
    if model is None:
        raise ConfigError(f"{artifact / MARKER}: stage artifact does not name a model")
    return str(artifact) if model == "." else str(model)


def weights_dropped(artifact: str | os.PathLike) -> bool:
    """A transient full fine-tune whose model files were deleted once its evaluations were done."""
    path = Path(artifact) / MARKER
    return path.exists() and read_marker(artifact).get("weights") == "dropped"


def drop_weights(artifact: str | os.PathLike) -> int:
    """Delete a fine-tune folder's model files (manifest, log and trajectory stay), say so in the marker; bytes
    freed."""
    artifact = Path(artifact)
    freed = 0
    for name in (MODEL_CONFIG, "generation_config.json", "model.safetensors.index.json"):
        if (artifact / name).exists():
            freed += (artifact / name).stat().st_size
            (artifact / name).unlink()
    for path in artifact.glob("model*.safetensors"):
        freed += path.stat().st_size
        path.unlink()
    write_marker(artifact, {**read_marker(artifact), "weights": "dropped"})
    return freed


def read_trajectory(folder: str | os.PathLike) -> list[dict[str, Any]] | None:
    """A fine-tune folder's tracked trajectory (a list of points), or None when it did not track edits."""
    path = Path(folder) / TRAJECTORY
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(str(path), f"not valid JSON ({exc})") from None
    return raw if isinstance(raw, list) else raw.get("points", []) if isinstance(raw, dict) else None


def folder_form(folder: str | os.PathLike) -> str | None:
    """'model' (loads as it is), 'edit-deltas', 'adapter', or None when the folder is none of these."""
    folder = Path(folder)
    if (folder / MODEL_CONFIG).exists():
        return "model"
    if not (folder / MANIFEST).exists():
        return None
    if (folder / DELTAS).exists():
        return "edit-deltas"
    if (folder / ADAPTER / "adapter_config.json").exists():
        return "adapter"
    return None


def base_of(folder: str | os.PathLike) -> str:
    """The model a small folder is layered on: an edit's base, or the folder a fine-tune started from."""
    folder = Path(folder)
    form = folder_form(folder)
    manifest = read_manifest(folder)
    key = {"edit-deltas": "base_model_path", "adapter": "base_model"}.get(form or "")
    if key is None:
        raise ModelError(f"{folder} is not a deltas-only edit folder or an adapter-only fine-tune folder")
    base = manifest.get(key) or (manifest.get("base_model") if form == "edit-deltas" else None)
    if not isinstance(base, str) or not base:
        raise DataError(str(folder / MANIFEST), "does not name the model it is layered on", field=key)
    return base


def materialize(folder: str | os.PathLike, load_base: Callable[[str], tuple[Any, Any]]) -> tuple[Any, Any]:
    """(model, tokenizer) of a small folder: ``load_base(base)`` then the deltas added or the adapter merged
    (and a re-edit's :data:`REEDIT_DELTAS` added after the merge, as the fine-tune applied them)."""
    folder = Path(folder)
    form = folder_form(folder)
    base = base_of(folder)
    model, tok = load_base(base)
    if form == "edit-deltas":
        apply_deltas(model, read_deltas(folder / DELTAS), source=str(folder / DELTAS))
        return model, tok
    from peft import PeftModel

    from editdecay.util.env import peft_without_deprecation_noise

    try:
        with peft_without_deprecation_noise():
            merged = PeftModel.from_pretrained(model, str(folder / ADAPTER)).merge_and_unload()
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{folder / ADAPTER}: cannot apply the adapter to {base}: {exc}") from None
    if (folder / REEDIT_DELTAS).exists():  # preserve_strategy=reedit: the re-edit written after the merge
        apply_deltas(merged, read_deltas(folder / REEDIT_DELTAS), source=str(folder / REEDIT_DELTAS))
    merged.eval()
    return merged, tok


def apply_deltas(model: Any, deltas: dict[str, Any], sign: int = 1, source: str = "<deltas>") -> None:
    """``W += sign * delta`` for every delta (sign=-1 undoes an edit); shapes and names are checked."""
    import torch

    if sign not in (1, -1):
        raise ModelError(f"sign must be +1 or -1, got {sign}")
    params = dict(model.named_parameters())
    for name, delta in deltas.items():
        if name not in params:
            raise ModelError(f"{source}: delta for {name!r}: the model has no such parameter")
        p = params[name]
        if tuple(p.shape) != tuple(delta.shape):
            raise ModelError(f"{source}: delta for {name!r} has shape {tuple(delta.shape)}, the parameter "
                             f"{tuple(p.shape)}")
        with torch.no_grad():  # summed in float32 and rounded once, as the in-place edit of a bf16 model is
            p.copy_((p.float() + sign * delta.to(device=p.device, dtype=torch.float32)).to(p.dtype))
