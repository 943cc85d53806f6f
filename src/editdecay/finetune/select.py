"""Which parameters a fine-tuning run trains: layers x modules, turned into parameter names or PEFT targets.

Selective-layer fine-tuning (the study's new strategy) trains only the edited layers, only the others, all,
or an explicit list. The layer choice and the module choice (attention, MLP, named projections) are
independent. Everything is located through the :class:`ArchAdapter` table, so no code here knows a model
by name; GPT-2's ``Conv1D`` (weights stored [in, out]) is detected and given ``fan_in_fan_out`` for LoRA.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from editdecay.artifacts import edited_layers, edited_selection
from editdecay.artifacts import (
    read_edit_manifest as read_edit_manifest,  # the edit folder's reader, re-exported
)
from editdecay.errors import ConfigError
from editdecay.finetune.config import FinetuneConfig, parse_layer_setting
from editdecay.models.arch import ArchAdapter, _get, get_adapter


@dataclass(frozen=True)
class Selection:
    """The resolved choice: layer indices, projection paths inside a layer, and their full module names."""

    layers: list[int]
    projections: list[str]
    module_names: list[str]
    extra: list[str]


def resolve_layers(
    spec: str | list[int], n_layers: int, edit_manifest: dict[str, Any] | None = None
) -> list[int]:
    """Layer indices for a selection; 'edited'/'non-edited' need the edit manifest's "layers"."""
    spec = parse_layer_setting(spec)
    if spec == "all":
        return list(range(n_layers))
    if spec in ("edited", "non-edited"):
        if edit_manifest is None:
            raise ConfigError(
                f"layers='{spec}' needs an edit manifest: pass --track-edits EDIT_DIR (or a --model that is an "
                "edit folder with manifest.json), or list the layers explicitly"
            )
        edited = edited_layers(edit_manifest)
        bad = [i for i in edited if not 0 <= i < n_layers]
        if bad:
            raise ConfigError(f"edit manifest layers {bad} are outside this model's layers 0..{n_layers - 1}")
        if spec == "edited":
            if not edited:
                raise ConfigError("layers='edited' but the edit manifest lists no edited layers")
            return edited_selection(spec, edited, n_layers)
        rest = edited_selection(spec, edited, n_layers)
        if not rest:
            raise ConfigError("layers='non-edited' but every layer of the model was edited")
        return rest
    bad = [i for i in spec if i >= n_layers]
    if bad:
        raise ConfigError(f"fine-tuning setting 'layers': {bad} out of range; this model has layers 0..{n_layers - 1}")
    return list(spec)


def select(model: nn.Module, cfg: FinetuneConfig, edit_manifest: dict[str, Any] | None = None) -> Selection:
    """Resolve ``cfg.layers`` and ``cfg.modules`` on ``model`` (checked against its real modules)."""
    adapter = get_adapter(model)
    layers = resolve_layers(cfg.layers, adapter.num_layers(model), edit_manifest)
    try:
        projections = adapter.projection_names(cfg.modules)
    except Exception as exc:  # ModelError from the adapter: report it as the setting it came from
        raise ConfigError(f"fine-tuning setting 'modules' = {cfg.modules!r}: {exc}") from None
    names = [f"{adapter.layers}.{i}.{p}" for i in layers for p in projections]
    for name in names:
        _get(model, name)
    return Selection(layers=layers, projections=projections, module_names=names, extra=list(cfg.train_extra))


def without_modules(selection: Selection, modules: list[str], why: str) -> Selection:
    """``selection`` minus the named modules (preserve's freeze); an emptied selection is an error."""
    drop = set(modules)
    kept = [n for n in selection.module_names if n not in drop]
    if not kept and not selection.extra:
        raise ConfigError(f"{why} leaves nothing to train: every selected module ({', '.join(selection.module_names)}) "
                          "is one the edit rewrote; select other layers or modules")
    return Selection(layers=selection.layers, projections=selection.projections, module_names=kept,
                     extra=selection.extra)


def full_trainable_names(model: nn.Module, selection: Selection) -> list[str]:
    """Parameter names full fine-tuning trains: the selected projections' weights and biases (plus extras)."""
    adapter = get_adapter(model)
    chosen: set[int] = set()
    for name in selection.module_names:
        chosen.update(id(p) for p in _get(model, name).parameters())
    if "embed" in selection.extra:
        chosen.update(id(p) for p in _get(model, adapter.embed).parameters())
    if "unembed" in selection.extra:
        chosen.update(id(p) for p in _get(model, adapter.unembed).parameters())
    if "norms" in selection.extra:
        for module in _norm_modules(model, adapter, selection.layers):
            chosen.update(id(p) for p in module.parameters(recurse=False))
    return [n for n, p in model.named_parameters() if id(p) in chosen]


def _norm_modules(model: nn.Module, adapter: ArchAdapter, layers: list[int]) -> list[nn.Module]:
    out = [_get(model, adapter.final_norm)]
    for i in layers:
        out.extend(m for m in adapter.layer(model, i).modules() if "norm" in type(m).__name__.lower())
    return out


def apply_full_selection(model: nn.Module, selection: Selection) -> list[str]:
    """Freeze everything except :func:`full_trainable_names`; return those names."""
    names = set(full_trainable_names(model, selection))
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    return [n for n, _ in model.named_parameters() if n in names]


def uses_conv1d(model: nn.Module, selection: Selection) -> bool:
    """True when the selected projections are GPT-2 style Conv1D (weight stored [in, out])."""
    from transformers.pytorch_utils import Conv1D

    kinds = {isinstance(_get(model, n), Conv1D) for n in selection.module_names}
    if len(kinds) > 1:
        raise ConfigError("the selected modules mix Conv1D and Linear projections; select one kind per run")
    return kinds == {True}


def lora_config(model: nn.Module, selection: Selection, cfg: FinetuneConfig):
    """The PEFT LoraConfig: adapters exactly on the selected modules (full names), DoRA via ``use_dora``."""
    from peft import LoraConfig

    if cfg.type not in ("lora", "dora"):
        raise ConfigError(f"lora_config is for lora/dora runs, not type={cfg.type!r}")
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(selection.module_names),
        use_dora=cfg.type == "dora",
        fan_in_fan_out=uses_conv1d(model, selection),
        bias="none",
        task_type="CAUSAL_LM",
    )


def layer_of(name: str, adapter: ArchAdapter) -> int | None:
    """The decoder-layer index a (possibly PEFT-prefixed) parameter name belongs to, or None."""
    match = re.search(rf"(?:^|\.){re.escape(adapter.layers)}\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def count_per_layer(named: list[tuple[str, int]], adapter: ArchAdapter) -> dict[str, int]:
    """{layer index (as str) or 'other': number of trained scalars} for the manifest."""
    out: dict[str, int] = {}
    for name, numel in named:
        layer = layer_of(name, adapter)
        key = str(layer) if layer is not None else "other"
        out[key] = out.get(key, 0) + numel
    return dict(sorted(out.items(), key=lambda kv: (kv[0] == "other", int(kv[0]) if kv[0] != "other" else 0)))
