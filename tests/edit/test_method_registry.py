"""The method registry: one list of editing methods, read by the CLI, the grid validator and the hparams loader."""

from __future__ import annotations

import pytest

from editdecay.edit.hparams import default_hparams
from editdecay.edit.hparams_classes import AlphaEditHparams, EditHparams
from editdecay.edit.registry import METHODS, get_method, method_names
from editdecay.errors import ConfigError


def test_registry_names_classes_and_rules():
    assert method_names() == ("memit", "alphaedit")
    assert get_method("MEMIT").hparams is EditHparams and get_method("alphaedit").hparams is AlphaEditHparams
    assert get_method("memit").state_class is None
    assert get_method("alphaedit").state_class.__name__ == "AlphaEditState"
    assert all(callable(m.build_rule) for m in METHODS.values())
    assert type(default_hparams("alphaedit")) is AlphaEditHparams


def test_a_typo_gets_the_closest_name():
    with pytest.raises(ConfigError, match=r"unknown editing method 'memt' \(did you mean 'memit'\?\); known: memit"):
        get_method("memt")
    with pytest.raises(ConfigError, match="unknown editing method 'rome'; known: memit, alphaedit"):
        get_method("rome")


def test_cli_and_grid_read_the_registry():
    from editdecay.cli import build_parser
    from editdecay.experiment.schema import METHODS as GRID_METHODS

    assert GRID_METHODS == method_names()
    parser = build_parser()
    args = parser.parse_args(["edit", "--method", "alphaedit", "--out", "x"])
    assert args.method == "alphaedit"
    with pytest.raises(SystemExit):
        parser.parse_args(["edit", "--method", "rome", "--out", "x"])
