"""The method registry: every editing method by name, with its hyperparameters, update rule and state.

MEMIT and AlphaEdit share the whole pipeline (prompts, keys, target values, spreading) and differ only in how
ΔW is solved from keys K, residuals R, the second moments C and the method's state. A method is therefore one
:class:`Method` entry here:

- ``hparams``: its hyperparameter dataclass (:mod:`editdecay.edit.hparams_classes`);
- ``module``: the module holding its update rule, which provides ``build_rule(hp, stats, *, state, device,
  timings, log) -> (UpdateRule, state or None)`` and ``STATE`` (the class of the state carried between
  sequential batches, or None for a stateless method).

Everything that needs the list of methods reads it from here: the CLI's ``--method`` choices, the grid
validator, the hparams loader and :func:`editdecay.edit.api.edit`. The rule module is imported only when a
rule is built, so reading the registry (``--help``, validating a grid) costs no torch import. Adding a method
(MEND is next) is a new hparams class, a rule module and one line in :data:`METHODS` (rows in
:data:`editdecay.edit.hparams.DEFAULTS` are optional: without them it starts from its class's defaults).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from editdecay.edit.hparams_classes import AlphaEditHparams, EditHparams
from editdecay.errors import ConfigError


@dataclass(frozen=True)
class Method:
    """One editing method: its name, display title, hyperparameter class and update-rule module."""

    name: str
    title: str
    hparams: type[EditHparams]
    module: str  # provides build_rule(...) and STATE
    summary: str = ""
    # (edited layers, key width f) -> (extra peak bytes, extra disk bytes) by part, for `editdecay plan`
    state_cost: Callable[[int, int], tuple[dict[str, int], dict[str, int]]] | None = None

    def rule_module(self) -> ModuleType:
        return importlib.import_module(self.module)

    @property
    def build_rule(self) -> Callable[..., tuple[Any, Any]]:
        """``build_rule(hp, stats, *, state, device, timings, log) -> (UpdateRule, state or None)``."""
        return self.rule_module().build_rule

    @property
    def state_class(self) -> type | None:
        """The class of the state kept between sequential batches (``save``/``load``), or None."""
        return getattr(self.rule_module(), "STATE", None)


def _alphaedit_cost(n_layers: int, f: int) -> tuple[dict[str, int], dict[str, int]]:
    """The null-space projections P and the preserved keys' K_pK_pᵀ (float64, eigh workspace), kept per layer.
    On disk per layer: the null-space basis (f × rank float64, at most f²) and K_pK_pᵀ's upper triangle."""
    return ({"AlphaEdit projection": (2 * n_layers + 2) * f * f * 8},
            {"AlphaEdit state": n_layers * (f * f + f * (f + 1) // 2) * 8})


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("memit", "MEMIT", EditHparams, "editdecay.edit.memit",
           "ΔW = R Kᵀ (λC + KKᵀ)⁻¹ (Meng et al. 2022)"),
    Method("alphaedit", "AlphaEdit", AlphaEditHparams, "editdecay.edit.alphaedit",
           "MEMIT's update projected onto the null space of preserved keys (Fang et al. 2025)", _alphaedit_cost),
)}


def method_names() -> tuple[str, ...]:
    """The registered method names, in registration order (``("memit", "alphaedit")``)."""
    return tuple(METHODS)


def get_method(name: str) -> Method:
    """The entry for ``name`` (case-insensitive); an unknown name raises :class:`ConfigError` with the closest
    registered name as a suggestion."""
    key = str(name).lower()
    if key in METHODS:
        return METHODS[key]
    close = difflib.get_close_matches(key, METHODS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown editing method {key!r}{hint}; known: {', '.join(METHODS)}")


def register(method: Method) -> None:
    """Add a method (an extension, or a test); a name already registered is refused."""
    if method.name in METHODS:
        raise ConfigError(f"editing method {method.name!r} is already registered")
    METHODS[method.name] = method


__all__ = ["Method", "METHODS", "method_names", "get_method", "register"]
