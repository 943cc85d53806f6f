"""The artifact folders the stages write, and how a small one becomes a model again.

An edit folder is *full* (a Hugging Face model folder plus ``deltas.safetensors`` and ``manifest.json``) or
*deltas-only* (``deltas.safetensors`` + ``manifest.json``, a few MB: the base is named in the manifest). A
fine-tune folder is *merged* (a model folder plus ``manifest.json`` and, for LoRA/DoRA, ``adapter/``) or
*adapter-only* (``adapter/`` + ``manifest.json``; the model it was trained from is named in the manifest, and
may itself be a deltas-only edit folder). Every command that takes ``--model`` accepts all four: a small folder
is materialised as base + deltas or base + merged adapter, the same weights the full form would hold.

This module knows the file names and manifest fields; it imports nothing from the stages (models/ calls it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from editdecay.errors import DataError, ModelError

MANIFEST = "manifest.json"
DELTAS = "deltas.safetensors"
ADAPTER = "adapter"
MODEL_CONFIG = "config.json"
FORMS = ("model", "edit-deltas", "adapter")


def read_manifest(folder: str | os.PathLike, stage: str | None = None) -> dict[str, Any]:
    """``folder/manifest.json`` as a dict; errors name the file and the field that is wrong."""
    path = Path(folder) / MANIFEST
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
    """(model, tokenizer) of a small folder: ``load_base(base)`` then the deltas added or the adapter merged."""
    folder = Path(folder)
    form = folder_form(folder)
    base = base_of(folder)
    model, tok = load_base(base)
    if form == "edit-deltas":
        from safetensors.torch import load_file

        apply_deltas(model, load_file(str(folder / DELTAS)), source=str(folder / DELTAS))
        return model, tok
    from peft import PeftModel

    try:
        merged = PeftModel.from_pretrained(model, str(folder / ADAPTER)).merge_and_unload()
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{folder / ADAPTER}: cannot apply the adapter to {base}: {exc}") from None
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
