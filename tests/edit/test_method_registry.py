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

    parser = build_parser()
    args = parser.parse_args(["edit", "--method", "alphaedit", "--out", "x"])
    assert args.method == "alphaedit"
    with pytest.raises(SystemExit):
        parser.parse_args(["edit", "--method", "rome", "--out", "x"])


def test_a_method_is_added_in_one_place():
    """One registry entry and the CLI, the grid validator and the hparams loader all know the method."""
    import yaml
    from helpers import ROOT

    from editdecay.cli import build_parser
    from editdecay.edit.hparams import hparams_from_dict
    from editdecay.edit.registry import Method, register
    from editdecay.experiment.grid import expand, parse_grid

    register(Method("memit-copy", "MEMIT copy", EditHparams, "editdecay.edit.memit"))
    try:
        assert build_parser().parse_args(["edit", "--method", "memit-copy", "--out", "x"]).method == "memit-copy"
        raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
        raw["methods"] = ["memit-copy"]
        grid = parse_grid(raw, "tiny.yaml", check_models=False)
        assert grid.axes["methods"] == ["memit-copy"]
        assert {s.config["method"] for s in expand(grid).stages.values() if s.kind == "edit"} == {"memit-copy"}
        assert type(hparams_from_dict("memit-copy", {"v_lr": 0.1})) is EditHparams
        with pytest.raises(ConfigError, match="already registered"):
            register(Method("memit-copy", "again", EditHparams, "editdecay.edit.memit"))
    finally:
        METHODS.pop("memit-copy")
    with pytest.raises(ConfigError, match="unknown method 'memit-copy'"):
        parse_grid(raw, "tiny.yaml", check_models=False)
