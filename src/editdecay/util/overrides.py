"""The one parser for ``--set KEY=VALUE`` overrides, used by every command that takes ``--set``.

Values are read as YAML 1.2 core-schema scalars and flow collections, not PyYAML's YAML 1.1: ``5e-1`` and
``1e-5`` are numbers (YAML 1.1 reads them as strings), ``010`` is ten (not octal eight), ``yes``/``no``/
``on``/``off`` and ``2024-01-01`` stay strings, ``true``/``false``/``null`` and ``[1, 2]`` / ``[embed, norms]``
are what they look like. Text that is not valid YAML is kept as the raw string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

from editdecay.errors import ConfigError

__all__ = ["load_yaml", "parse_override", "parse_overrides", "parse_value"]

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class _CoreLoader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema's booleans, integers and floats, and no timestamps."""


_CoreLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT, _TIMESTAMP)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_CoreLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_CoreLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_CoreLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)
# decimal only: SafeLoader's int constructor reads a leading 0 as octal and accepts 1_000 and 1:20
_CoreLoader.add_constructor(_INT, lambda loader, node: int(loader.construct_scalar(node)))


def load_yaml(text: str) -> Any:
    """A whole YAML document with the same YAML 1.2 core scalars (``v_lr: 5e-1`` is 0.5); errors propagate.

    For config files (grids, ``--hparams`` YAML) so that a value reads the same in a file as after ``--set``.
    """
    return yaml.load(text, Loader=_CoreLoader)  # noqa: S506 - a SafeLoader subclass


def parse_value(text: str) -> Any:
    """One override value: a YAML 1.2 core scalar or flow list/mapping, else the raw (stripped) string."""
    text = text.strip()
    try:
        return yaml.load(text, Loader=_CoreLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return text


def parse_override(text: str, option: str = "--set") -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(key, value)``; the key is stripped with ``-`` read as ``_`` (``max-steps``)."""
    if "=" not in text:
        raise ConfigError(f"{option} {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if not key:
        raise ConfigError(f"{option} {text!r}: the key before '=' is empty (expected KEY=VALUE)")
    return key, parse_value(raw)


def parse_overrides(items: Iterable[str], option: str = "--set") -> dict[str, Any]:
    """Repeated ``KEY=VALUE`` items -> a dict, later items winning (as on a command line)."""
    return dict(parse_override(item, option) for item in items)
