"""Model facts a grid plans with: layer count and parameter count, read from config.json without loading weights.

Used by the schema (layer ranges, per-model edit defaults) and by the cost estimates (model shapes). A model
is a registered name, a local folder, a hub id declared with ``{name, num_layers, params}``, or ``tiny:<arch>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from editdecay.errors import ConfigError

TINY_PREFIX = "tiny:"
SMOLLM2_PARAMS = 135e6  # the reference model of the time estimates, and the default of a declared model


def key_error(path: str, key: str, message: str) -> ConfigError:
    """The one shape of a grid error: ``<file>: '<key>': <message>``."""
    return ConfigError(f"{path}: '{key}': {message}")


def model_facts(model: str, declared: dict[str, Any], path: str = "<grid>") -> tuple[dict[str, Any], Any]:
    """({num_layers, params}, config): read from config.json without loading weights (or as declared)."""
    config = model_config(model, declared, path)
    if config is None:
        info = {"num_layers": int(declared["num_layers"]), "params": float(declared.get("params", SMOLLM2_PARAMS))}
        return {**declared, **info}, None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None)
    d = getattr(text, "hidden_size", None)
    vocab = getattr(text, "vocab_size", 0) or 0
    inter = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * (d or 0)
    if layers is None or d is None:
        raise ConfigError(f"{path}: model {model!r}: its config has no num_hidden_layers/hidden_size")
    params = layers * (4 * d * d + 3 * d * inter) + 2 * vocab * d
    return {**declared, "num_layers": int(layers), "params": float(declared.get("params", params))}, config


def model_config(model: str, declared: dict[str, Any], path: str) -> Any:
    """The model's transformers config (no weights), or None for a declared hub model not on this machine."""
    from transformers import AutoConfig

    from editdecay.errors import ModelError
    from editdecay.models.registry import REGISTRY, resolve_model

    if model.startswith(TINY_PREFIX):
        from editdecay.models.tiny import TINY_ARCHS, tiny_config

        arch = model[len(TINY_PREFIX):]
        if arch not in TINY_ARCHS:
            raise key_error(path, "models", f"unknown tiny architecture {arch!r}; allowed: "
                            + ", ".join(TINY_PREFIX + a for a in TINY_ARCHS))
        return tiny_config(arch, vocab_size=512, **tiny_size(declared))
    looks_local = model.startswith((".", "/", "~")) or Path(model).expanduser().exists()
    if model not in REGISTRY and not looks_local and "/" not in model and "num_layers" not in declared:
        # a bare word that is not registered: most likely a typo, not a hub id
        try:
            return AutoConfig.from_pretrained(model, local_files_only=True)
        except (OSError, ValueError):
            raise key_error(path, "models", f"unknown model {model!r}; registered models: "
                            f"{', '.join(sorted(REGISTRY))} (or give a local folder, a hub id with num_layers, or tiny:<arch>)") from None
    try:
        source = resolve_model(model)
    except ModelError as exc:
        raise key_error(path, "models", f"{exc}; registered models: {', '.join(sorted(REGISTRY))}") from None
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        if "num_layers" in declared:
            return None  # the grid declares the facts for a hub model not downloaded here (used for planning)
        raise key_error(path, "models", f"cannot read config.json of {model!r} ({exc.__class__.__name__}); "
                        "download it, or declare it as {name: ..., num_layers: N, params: P} to plan without it") from None


def tiny_size(declared: dict[str, Any]) -> dict[str, int]:
    """The size of a ``tiny:<arch>`` model, as its models entry declares it (4 layers of width 64 by default)."""
    return {"n_layers": int(declared.get("num_layers", 4)), "d_model": int(declared.get("d_model", 64))}
