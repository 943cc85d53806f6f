"""Hyperparameters of the editing methods: ONE table of per-model defaults and the loader (defaults, file, overrides).

The dataclasses themselves are in :mod:`editdecay.edit.hparams_classes` (re-exported here); which class a
method name means comes from the method registry (:mod:`editdecay.edit.registry`).

Field names follow the MEMIT/AlphaEdit reference code (``v_lr``, ``clamp_norm_factor``,
``mom2_update_weight`` ...) so published settings can be pasted in. Differences from the reference files:

- The statistics budget is ``mom2_n_tokens`` (tokens, the default) or, as in the reference files,
  ``mom2_n_samples`` (documents, each cut to ``mom2_seq_len`` tokens; the reference cuts Wikipedia articles
  to the model's context length). ``mom2_dataset`` names local corpora, files or ``hf:NAME[:CONFIG]`` hub
  datasets (:mod:`editdecay.edit.stats_text`); ``mom2_allow_short`` lets a corpus smaller than the budget
  be used (recorded; otherwise an error).
- The reference files' module templates (``rewrite_module_tmp``, ``layer_module_tmp``, ``mlp_module_tmp``,
  ``attn_module_tmp``, ``ln_f_module``, ``lm_head_module``) are checked against the adapter table
  (:mod:`editdecay.models.arch`), which decides the modules; they and ``mom2_adjustment`` (read only by
  ROME), ``model_name`` and ``alg_name`` have no further effect, and a :class:`HparamsWarning` lists them.
- ``v_loss_layer=None`` means the last layer (the papers always tie the loss to the last layer).
- ``context_template_length_params`` is ``[[max_tokens, count], ...]``; MEMIT/AlphaEdit use one group of
  five 10-token generations (``[[10, 5]]``), ROME two groups (``[[5, 10], [10, 10]]``).
- ``z_batch_size`` (requests optimised together), ``z_prefix_cache`` (reuse the keys/values of the positions
  before the subject's last token across steps) and ``max_condition`` (the solve's condition-number limit)
  are engineering knobs of this implementation: they change speed, not the result (beyond float rounding).

Defaults come from :data:`DEFAULTS`, keyed by ``(method, model key)``: the papers' values for GPT-2 XL,
GPT-J and Llama-3-8B, and values found by the sweep in ``scripts/sweep_edit.py`` (see docs/editing.md) for
SmolLM2-135M and Gemma-3-270M. Other models get :func:`generic_layers` and the small-model values.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

from editdecay.edit.hparams_classes import AlphaEditHparams, EditHparams
from editdecay.edit.registry import get_method, method_names
from editdecay.errors import ConfigError

# the reference code's module templates, checked against the adapter table, then dropped
MODULE_KEYS = ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp", "ln_f_module",
               "lm_head_module")
NO_EFFECT_KEYS = {"model_name": "descriptive", "alg_name": "descriptive",
                  "mom2_adjustment": "read only by ROME; MEMIT and AlphaEdit always use C"}
# table keys -> architecture, to check a file's module templates when only a table key is known
_KEY_ARCH = {"gpt2-xl": "gpt2", "gpt-j-6b": "gptj", "llama3-8b": "llama", "smollm2-135m": "llama",
             "gemma3-270m": "gemma3_text"}


class HparamsWarning(UserWarning):
    """A hyperparameter file holds keys that have no effect here, or that mean something different."""


# ----------------------------------------------------------------------------------------------------------
# THE table of defaults. Keys: (method, model key); values override the dataclass defaults.

_PAPER = dict(v_weight_decay=0.5, kl_factor=0.0625, clamp_norm_factor=0.75, mom2_n_tokens=100_000)
_ALPHA = dict(nullspace_threshold=2e-2, L2=10.0)

# Swept on SmolLM2-135M / CounterFact (scripts/sweep_edit.py; table and reasoning in docs/editing.md).
_SMOLLM2 = dict(layers=[4, 5, 6, 7, 8], v_lr=0.5, v_num_grad_steps=25, clamp_norm_factor=4.0,
                v_weight_decay=0.5, kl_factor=0.0625, mom2_update_weight=1500.0, mom2_n_tokens=100_000)
_GEMMA3_270M = dict(layers=[3, 4, 5, 6], v_lr=0.5, v_num_grad_steps=25, clamp_norm_factor=4.0,
                    v_weight_decay=0.5, kl_factor=0.0625, mom2_update_weight=1500.0, mom2_n_tokens=100_000)
_SMALL = dict(v_lr=0.5, v_num_grad_steps=25, clamp_norm_factor=4.0, mom2_update_weight=150.0)

DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    # MEMIT paper / reference code hparams/MEMIT/*.json
    ("memit", "gpt2-xl"): dict(_PAPER, layers=[13, 14, 15, 16, 17], v_lr=0.5, v_num_grad_steps=20,
                               mom2_update_weight=20000.0),
    ("memit", "gpt-j-6b"): dict(_PAPER, layers=[3, 4, 5, 6, 7, 8], v_lr=0.5, v_num_grad_steps=25,
                                mom2_update_weight=15000.0),
    ("memit", "llama3-8b"): dict(_PAPER, layers=[4, 5, 6, 7, 8], v_lr=0.1, v_num_grad_steps=25,
                                 mom2_update_weight=15000.0),
    # AlphaEdit reference code hparams/AlphaEdit/*.json
    ("alphaedit", "gpt2-xl"): dict(_PAPER, **_ALPHA, layers=[13, 14, 15, 16, 17], v_lr=0.5, v_num_grad_steps=20,
                                   mom2_update_weight=20000.0),
    ("alphaedit", "gpt-j-6b"): dict(_PAPER, **_ALPHA, layers=[3, 4, 5, 6, 7, 8], v_lr=0.5, v_num_grad_steps=25,
                                    mom2_update_weight=15000.0),
    ("alphaedit", "llama3-8b"): dict(_PAPER, **_ALPHA, layers=[4, 5, 6, 7, 8], v_lr=0.1, v_num_grad_steps=25,
                                     mom2_update_weight=15000.0),
    # swept here
    ("memit", "smollm2-135m"): dict(_SMOLLM2),
    ("alphaedit", "smollm2-135m"): dict(_SMOLLM2, nullspace_threshold=1e-2, L2=1.0),
    ("memit", "gemma3-270m"): dict(_GEMMA3_270M),
    ("alphaedit", "gemma3-270m"): dict(_GEMMA3_270M, nullspace_threshold=2e-2, L2=1.0),
    # anything else: small-model values, layers from generic_layers()
    ("memit", "generic"): dict(_SMALL),
    ("alphaedit", "generic"): dict(_SMALL, **_ALPHA),
}


def _config_of(model: Any) -> Any:
    return getattr(model, "config", model)


def _get(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None) if not isinstance(config, dict) else config.get(name)
        if value is not None:
            return value
    return None


def model_key(model: Any) -> str:
    """The defaults-table key of a model (or config, or registered name): architecture + size."""
    if isinstance(model, str):
        if any(key == model for _, key in DEFAULTS):
            return model
        return "generic"
    config = _config_of(model)
    model_type = _get(config, "model_type")
    n_layers = _get(config, "num_hidden_layers", "n_layer")
    d_model = _get(config, "hidden_size", "n_embd")
    if model_type == "gpt2" and n_layers == 48 and d_model == 1600:
        return "gpt2-xl"
    if model_type == "gptj" and n_layers == 28 and d_model == 4096:
        return "gpt-j-6b"
    if model_type == "llama" and n_layers == 32 and d_model == 4096:
        return "llama3-8b"
    if model_type == "llama" and n_layers == 30 and d_model == 576:
        return "smollm2-135m"
    if model_type in ("gemma3_text", "gemma3") and n_layers == 18 and d_model == 640:
        return "gemma3-270m"
    return "generic"


def generic_layers(n_layers: int) -> list[int]:
    """Layers for a model without a table row: a window of up to 5 layers starting ~15% deep.

    On 30 layers this gives 4..8 (the Llama-3-8B window scaled to depth), on 4 layers [1].
    """
    count = max(1, min(5, n_layers // 6))
    start = max(1, round(n_layers * 0.15)) if n_layers > 1 else 0
    start = min(start, max(0, n_layers - count))
    return list(range(start, start + count))


def default_hparams(method: str, model: Any = None) -> EditHparams:
    """Defaults for ``method`` on ``model`` (an nn.Module, a config, or a table key such as 'gpt2-xl').

    A method with no row for the model in :data:`DEFAULTS` takes its ``generic`` row, and one with no rows at all
    (a newly registered method) its hyperparameter class's own defaults."""
    method = _check_method(method)
    key = model_key(model) if model is not None else "generic"
    values = dict(DEFAULTS.get((method, key), DEFAULTS.get((method, "generic"), {})))
    if "layers" not in values:
        n_layers = _get(_config_of(model), "num_hidden_layers", "n_layer") if model is not None else None
        values["layers"] = generic_layers(int(n_layers)) if n_layers else [4, 5, 6, 7, 8]
    return get_method(method).hparams(**values)


def _check_method(method: str) -> str:
    return get_method(method).name


def hparams_from_dict(method: str, values: dict[str, Any], base: EditHparams | None = None,
                      model: Any = None) -> EditHparams:
    """``base`` (or the dataclass defaults) with ``values`` applied; unknown keys raise ConfigError.

    The reference code's keys are accepted (see the module docstring): module templates are checked against
    the adapter table of ``model`` (an nn.Module, a config or a table key) and a :class:`HparamsWarning` lists
    the keys that have no effect.
    """
    method = _check_method(method)
    cls = get_method(method).hparams
    names = {f.name for f in fields(cls)}
    values = dict(values)
    given_method = values.pop("method", None)
    if given_method is not None and str(given_method).lower() != method:
        raise ConfigError(f"hparams.method: the file is for {given_method!r} but the method is {method!r}")
    notes = _reference_keys(values, model)
    unknown = sorted(set(values) - names)
    if unknown:
        hint = ""
        for other in method_names():  # keys of another method: say which
            spec = get_method(other)
            if other != method and set(unknown) <= {f.name for f in fields(spec.hparams)} - names:
                hint = f" ({spec.title}-only keys; use --method {other})"
                break
        raise ConfigError(f"unknown hparams key(s) {', '.join(unknown)} for {method}{hint}; "
                          f"known: {', '.join(sorted(names | set(MODULE_KEYS) | set(NO_EFFECT_KEYS)))}")
    reference = bool(notes)  # the values come from a reference file: say where its meaning differs
    if reference and values.get("mom2_dataset") == "wikipedia" and values.get("mom2_n_samples"):
        notes.append("mom2_dataset 'wikipedia' is the local sample of Wikipedia articles here, not the full "
                     "dump the reference code streams: use hf:wikimedia/wikipedia:20231101.en where the hub is "
                     "reachable, or a local file")
    if reference and values.get("mom2_n_samples") and "mom2_seq_len" not in values:
        notes.append("mom2_n_samples: each document is cut to mom2_seq_len tokens (the reference cuts it to the "
                     "model's context length, e.g. 1024 for GPT-2 XL): set mom2_seq_len to match")
    if notes:
        warnings.warn(HparamsWarning("hparams: " + "; ".join(notes)), stacklevel=2)
    if base is not None:
        start = {f.name: copy.deepcopy(getattr(base, f.name)) for f in fields(cls) if hasattr(base, f.name)}
    else:
        start = {}
    start.update(values)
    try:
        hp = cls(**start)
    except TypeError as exc:
        raise ConfigError(f"invalid hparams for {method}: {exc}") from None
    hp.validate()
    return hp


def _adapter_of(model: Any) -> tuple[Any, bool | None]:
    """(ArchAdapter or None, tie_word_embeddings or None) for an nn.Module, a config or a table key."""
    from editdecay.errors import ModelError
    from editdecay.models.arch import get_adapter

    if model is None:
        return None, None
    if isinstance(model, str):
        arch = _KEY_ARCH.get(model)
        return (get_adapter(arch) if arch else None), None
    config = _config_of(model)
    model_type = _get(config, "model_type")
    if model_type is None:
        return None, None
    try:
        adapter = get_adapter(str(model_type))
    except ModelError as exc:
        raise ConfigError(f"hparams module templates cannot be checked: {exc}") from None
    return adapter, _get(config, "tie_word_embeddings")


def expected_modules(adapter: Any) -> dict[str, str]:
    """The reference code's module templates as the adapter table spells them for one architecture."""
    layer = f"{adapter.layers}.{{}}"
    attn_parts = [p.split(".")[:-1] for p in adapter.attn_projections]
    common: list[str] = []
    for parts in zip(*attn_parts, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return {"layer_module_tmp": layer, "rewrite_module_tmp": f"{layer}.{adapter.rewrite}",
            "mlp_module_tmp": f"{layer}.{adapter.rewrite.rsplit('.', 1)[0]}",
            "attn_module_tmp": f"{layer}.{'.'.join(common)}", "ln_f_module": adapter.final_norm,
            "lm_head_module": adapter.unembed}


def _reference_keys(values: dict[str, Any], model: Any) -> list[str]:
    """Check and drop the reference files' keys that this implementation does not read; notes for a warning."""
    notes = []
    dropped = [f"{k} ({NO_EFFECT_KEYS[k]})" for k in NO_EFFECT_KEYS if k in values]
    for key in NO_EFFECT_KEYS:
        values.pop(key, None)
    modules = {k: values.pop(k) for k in MODULE_KEYS if k in values}
    if modules:
        adapter, tied = _adapter_of(model)
        if adapter is None:
            how = "not checked: no model architecture known here; the adapter table decides the modules"
        else:
            want = expected_modules(adapter)
            for key, value in modules.items():
                ok = value == want[key] or (key == "lm_head_module" and value == adapter.embed and tied is not False)
                if not isinstance(value, str) or not ok:
                    raise ConfigError(
                        f"hparams.{key}: {value!r} is not the module the adapter table uses for {adapter.name} "
                        f"({want[key]!r}, src/editdecay/models/arch.py); editdecay edits the modules its table "
                        "names, so fix the file (is it for another architecture?) or the table row")
            how = f"checked against the adapter table's {adapter.name} row, which decides the modules"
        dropped.append(f"{', '.join(modules)} ({how})")
    if dropped:
        notes.append("keys with no effect: " + "; ".join(dropped))
    return notes


def load_hparams_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML or JSON mapping of hparams keys (the reference MEMIT/AlphaEdit JSON files work as they are:
    :func:`hparams_from_dict` maps their keys)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"hparams file {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            from editdecay.util.overrides import load_yaml

            data = load_yaml(text)  # YAML 1.2 scalars: `v_lr: 5e-1` reads as with --set v_lr=5e-1
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes a config error naming the file
        raise ConfigError(f"hparams file {path}: cannot parse: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"hparams file {path}: expected a mapping of keys to values")
    return data


def parse_layers(text: str) -> list[int]:
    """'4,5,6' or '4-8' or '4-6,9' -> [4, 5, 6] / [4, ..., 8] / [4, 5, 6, 9] (the project's one layer parser)."""
    from editdecay.util.layers import parse_layer_list

    return parse_layer_list(text, "--layers")


def resolve_hparams(
    method: str,
    model: Any,
    hparams: EditHparams | dict[str, Any] | str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
) -> EditHparams:
    """Defaults for the model, then a dataclass / dict / file, then overrides; validated against the model."""
    method = _check_method(method)
    if isinstance(hparams, EditHparams):
        if hparams.method != method:
            raise ConfigError(f"hparams are {type(hparams).__name__} ({hparams.method}) but the method is {method}")
        base = hparams
    else:
        base = default_hparams(method, model)
        if isinstance(hparams, (str, os.PathLike)):
            base = hparams_from_dict(method, load_hparams_file(hparams), base, model)
        elif isinstance(hparams, dict):
            base = hparams_from_dict(method, hparams, base, model)
        elif hparams is not None:
            raise ConfigError(f"hparams must be a dataclass, dict or file path, got {type(hparams).__name__}")
    if overrides:
        base = hparams_from_dict(method, overrides, base, model)
    n_layers = _get(_config_of(model), "num_hidden_layers", "n_layer") if model is not None else None
    base.validate(int(n_layers) if n_layers else None)
    return base


__all__ = ["EditHparams", "AlphaEditHparams", "HparamsWarning", "DEFAULTS", "MODULE_KEYS", "NO_EFFECT_KEYS",
           "model_key", "generic_layers", "default_hparams", "hparams_from_dict", "expected_modules",
           "load_hparams_file", "parse_layers", "resolve_hparams"]
