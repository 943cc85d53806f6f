"""Where an edit and a fine-tune changed the weights, layer by layer.

- edit change of layer i: ‖ΔW‖ / ‖W_base‖ of the rewritten projection, from ``deltas.safetensors``
  (``W_base = W_edited − ΔW``); the edited layers are the manifest's ``layers``.
- fine-tuning change of layer i: ‖W_ft − W_in‖ / ‖W_in‖ over all of the layer's weights, between the
  fine-tuned model and the model it started from (for M_ed_ft: the edited model).

A folder in full form is read tensor by tensor from its safetensors files. A small one is read lazily too where
its base is readable: a deltas-only edit as ``W_base + ΔW``, an adapter-only LoRA / DoRA fine-tune as the
adapter's merge done per tensor (what PEFT's merge computes); anything else (a re-edit beside the adapter, bias
or saved modules, rank patterns) is materialised with ``load_model`` (the same weights the full form would hold).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from editdecay.artifacts import (
    ADAPTER,
    DELTAS,
    MANIFEST,
    MODEL_CONFIG,
    REEDIT_DELTAS,
    edited_layers,
    folder_form,
    read_deltas,
    read_edit_manifest,
)


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.safetensors") if p.name != DELTAS)


def is_model_folder(folder: str | os.PathLike) -> bool:
    """A folder whose weights can be read as they are (config.json plus safetensors files)."""
    folder = Path(folder)
    return (folder / MODEL_CONFIG).exists() and bool(weight_files(folder))


def readable(folder: str | os.PathLike) -> bool:
    """A model folder, or a small folder ``load_model`` materialises."""
    return is_model_folder(folder) or folder_form(folder) in ("edit-deltas", "adapter")


def _layer_index(key: str, prefix: str) -> int | None:
    match = re.match(re.escape(prefix) + r"\.(\d+)\.", key)
    return int(match.group(1)) if match else None


@contextmanager
def _weights(folder: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """(name -> a zero-argument getter of the float32 tensor, the architecture's layer prefix).

    A small folder on a base whose weights are readable is read lazily too (:func:`_layered`), so no model is
    held in memory."""
    from editdecay.models.arch import get_adapter

    layered = _layered(folder)
    if layered is not None:
        base, changes = layered
        with _weights(base) as (weights, prefix):
            if set(changes) <= set(weights):  # else the names differ from the model's (older checkpoints):
                changed = dict(weights)       # materialising below maps them as loading does
                for key, change in changes.items():
                    changed[key] = (lambda get, f: lambda: f(get()))(weights[key], change)
                yield changed, prefix
                return
    if is_model_folder(folder):
        from safetensors import safe_open

        config = json.loads((folder / MODEL_CONFIG).read_text(encoding="utf-8"))
        prefix = get_adapter(str(config.get("model_type", ""))).layers
        with ExitStack() as stack:
            getters: dict[str, Any] = {}
            for file in weight_files(folder):
                handle = stack.enter_context(safe_open(str(file), framework="pt"))
                for key in handle.keys():  # noqa: SIM118 (no __iter__)
                    getters[key] = (lambda h, k: lambda: h.get_tensor(k).float())(handle, key)
            yield getters, prefix
        return
    from editdecay.models.registry import load_model

    model, _ = load_model(str(folder))
    state = model.state_dict()
    yield {k: _getter(t) for k, t in state.items()}, get_adapter(model).layers


def _readable_base(folder: Path) -> Path | None:
    """The folder a small folder (deltas-only edit, adapter-only fine-tune) is layered on when it can be read
    lazily (a model folder, or a deltas-only edit on one), else None (the folder is then materialised)."""
    from editdecay.artifacts import base_of
    from editdecay.errors import EditDecayError
    from editdecay.models.registry import resolve_model

    try:
        base = Path(resolve_model(base_of(folder)))
    except EditDecayError:  # a hub id or a missing folder: materialising reports it properly
        return None
    if is_model_folder(base) or (folder_form(base) == "edit-deltas" and _readable_base(base) is not None):
        return base
    return None


def _layered(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """(base folder, {weight name: W_base -> this folder's W}, float32) of a small folder read per tensor: a
    deltas-only edit as ``W_base + ΔW`` (as the edit applies it), an adapter-only fine-tune as its merge; None
    for a folder that is materialised instead."""
    form = folder_form(folder)
    if form == "adapter":
        return _lazy_adapter(folder)
    base = _readable_base(folder) if form == "edit-deltas" else None
    if base is None:
        return None
    deltas = read_deltas(folder / DELTAS)
    return base, {key: (lambda d: lambda w: w + d.float())(delta) for key, delta in deltas.items()}


ADAPTER_PREFIX = "base_model.model."


def _lazy_adapter(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """(the base folder, {weight name: W_in -> W_ft}) of an adapter-only fine-tune whose merge is done here per
    tensor: LoRA, W + s·BA, or DoRA, m / ‖W + s·BA‖_row · (W + s·BA) (s = alpha / r; transposed for Conv1D
    weights), on a base read lazily; None for any adapter this does not cover (it is then materialised)."""
    from safetensors.torch import load_file

    try:
        cfg = json.loads((folder / ADAPTER / "adapter_config.json").read_text(encoding="utf-8"))
        base = _readable_base(folder)
    except (OSError, ValueError):
        return None
    plain = (cfg.get("peft_type") == "LORA" and cfg.get("bias", "none") == "none" and not cfg.get("lora_bias")
             and not cfg.get("modules_to_save") and not cfg.get("rank_pattern") and not cfg.get("alpha_pattern")
             and not cfg.get("use_rslora") and not cfg.get("layer_replication")
             and not cfg.get("trainable_token_indices"))
    weights_file = folder / ADAPTER / "adapter_model.safetensors"
    if base is None or not plain or (folder / REEDIT_DELTAS).exists() or not weights_file.exists():
        return None
    parts: dict[str, dict[str, Any]] = defaultdict(dict)
    for key, tensor in load_file(str(weights_file)).items():
        match = re.fullmatch(re.escape(ADAPTER_PREFIX) + r"(.+)\.(lora_A|lora_B|lora_magnitude_vector)(?:\.weight)?",
                             key)
        if match is None:
            return None
        parts[match.group(1) + ".weight"][match.group(2)] = tensor.float()
    scale = float(cfg["lora_alpha"]) / int(cfg["r"])
    transposed = bool(cfg.get("fan_in_fan_out"))
    merges = {}
    for name, p in parts.items():
        if set(p) - {"lora_magnitude_vector"} != {"lora_A", "lora_B"} or p["lora_A"].shape[0] != int(cfg["r"]):
            return None
        merges[name] = (lambda a, b, m: lambda w: _merge(w, a, b, m, scale, transposed))(
            p["lora_A"], p["lora_B"], p.get("lora_magnitude_vector"))
    return base, merges


def _merge(w: Any, a: Any, b: Any, magnitude: Any, scale: float, transposed: bool) -> Any:
    """One adapted weight after the merge (float32)."""
    w = w.T if transposed else w
    merged = w + scale * (b @ a)
    if magnitude is not None:  # DoRA: the direction W + s·BA, rescaled to the learnt norm of each output row
        merged = (magnitude / merged.norm(dim=1)).unsqueeze(1) * merged
    return merged.T if transposed else merged


def _getter(tensor: Any) -> Any:
    return lambda: tensor.float()


def _manifest_layers(edit_folder: str | os.PathLike) -> list[int]:
    """The edit manifest's layers (artifacts' one reading of them), or [] for a folder without a manifest."""
    if not (Path(edit_folder) / MANIFEST).exists():
        return []
    return edited_layers(read_edit_manifest(edit_folder))


def edit_change(edit_folder: str | os.PathLike) -> tuple[dict[int, float], list[int]]:
    """({layer: ‖ΔW‖/‖W_base‖}, edited layers from the manifest, else the layers with a delta)."""
    edit_folder = Path(edit_folder)
    change: dict[int, float] = {}
    deltas = edit_folder / DELTAS
    if deltas.exists():
        with _weights(edit_folder) as (weights, prefix):
            for key, delta in read_deltas(deltas).items():
                layer = _layer_index(key, prefix)
                if layer is None or key not in weights:
                    continue
                delta = delta.float()
                base_norm = float((weights[key]() - delta).norm())
                change[layer] = float(delta.norm()) / base_norm if base_norm else math.nan
    return change, _manifest_layers(edit_folder) or sorted(change)


def finetune_change(input_folder: str | os.PathLike, ft_folder: str | os.PathLike) -> dict[int, float]:
    """{layer: ‖W_ft − W_in‖ / ‖W_in‖} over all of the layer's weights present in both models."""
    diff_sq: dict[int, float] = defaultdict(float)
    base_sq: dict[int, float] = defaultdict(float)
    with _weights(Path(input_folder)) as (inputs, _), _weights(Path(ft_folder)) as (tuned, prefix):
        for key, get in tuned.items():
            layer = _layer_index(key, prefix)
            if layer is None or key not in inputs:
                continue
            w_in, w_ft = inputs[key](), get()
            diff_sq[layer] += float((w_ft - w_in).pow(2).sum())
            base_sq[layer] += float(w_in.pow(2).sum())
    return {i: math.sqrt(diff_sq[i] / base_sq[i]) if base_sq[i] else math.nan for i in sorted(base_sq)}


def layer_change(input_folder: Path, ft_folder: Path) -> tuple[dict[int, float], dict[int, float], list[int]]:
    """(fine-tuning change by layer, edit change by layer, edited layers from the edit manifest)."""
    ft = finetune_change(input_folder, ft_folder)
    edit, layers = edit_change(input_folder)
    return ft, edit, layers
