"""The one ``--set KEY=VALUE`` parser (editdecay.util.overrides), and that edit and finetune both use it."""

from __future__ import annotations

import json

import pytest

from editdecay.cli import build_parser
from editdecay.cli import main as cli_main
from editdecay.errors import ConfigError
from editdecay.util.overrides import load_yaml, parse_override, parse_overrides, parse_value


@pytest.mark.parametrize("text, expected", [
    ("5e-1", 0.5), ("1e-5", 1e-5), ("5E-6", 5e-6), ("-2.5", -2.5), (".5", 0.5), ("1.", 1.0),
    ("16", 16), ("-3", -3), ("+2", 2), ("010", 10),  # decimal, not YAML 1.1's octal 8
    ("true", True), ("False", False), ("null", None), ("~", None), ("", None),
    ("cosine", "cosine"), ("4-8", "4-8"), ("4,5", "4,5"), (" padded ", "padded"),
    # YAML 1.1 oddities stay the strings they were typed as
    ("yes", "yes"), ("off", "off"), ("2024-01-01", "2024-01-01"), ("1:20", "1:20"), ("0x1f", "0x1f"),
    ("[embed, norms]", ["embed", "norms"]), ("[1, 5e-1]", [1, 0.5]), ("{a: 1e-3}", {"a": 1e-3}),
    ("[unclosed", "[unclosed"),  # not YAML: the raw text
])
def test_parse_value(text, expected):
    value = parse_value(text)
    assert value == expected and type(value) is type(expected)


def test_parse_override_keys_and_errors():
    assert parse_override("v_lr=5e-1") == ("v_lr", 0.5)
    assert parse_override(" max-steps = 20 ") == ("max_steps", 20)
    assert parse_override("data=a=b.jsonl") == ("data", "a=b.jsonl")  # only the first '=' splits
    with pytest.raises(ConfigError, match=r"--set 'novalue': expected KEY=VALUE"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="key before '=' is empty"):
        parse_override("=3")
    assert parse_overrides(["r=4", "r=8", "schedule=cosine"]) == {"r": 8, "schedule": "cosine"}


def test_load_yaml_reads_files_like_set():
    doc = load_yaml("edit:\n  v_lr: 5e-1\n  layers: [4, 5]\n  flag: yes\nlr: 1e-5\n")
    assert doc == {"edit": {"v_lr": 0.5, "layers": [4, 5], "flag": "yes"}, "lr": 1e-5}
    import yaml

    with pytest.raises(yaml.YAMLError):
        load_yaml("a: [1, 2")


def test_edit_set_reads_exponent_numbers(make_tiny, tmp_path, capsys):
    """`editdecay edit --set v_lr=5e-1` once failed: 'hparams.v_lr: must be a positive number, got '5e-1''."""
    model, tok = make_tiny("llama")
    model.save_pretrained(tmp_path / "m")
    argv = ["edit", "--model", str(tmp_path / "m"), "--method", "memit", "--print-hparams",
            "--set", "v_lr=5e-1", "--set", "mom2_update_weight=1.5e3", "--set", "layers=1-2", "--out", str(tmp_path / "unused")]
    assert cli_main(argv) == 0
    hp = json.loads(capsys.readouterr().out)
    assert hp["v_lr"] == 0.5 and hp["mom2_update_weight"] == 1500.0 and hp["layers"] == [1, 2]
    assert cli_main(argv + ["--set", "layers=2"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == [2]
    assert cli_main(argv + ["--set", "novalue"]) == 1
    assert "--set 'novalue': expected KEY=VALUE" in capsys.readouterr().err


def test_finetune_set_uses_the_same_parser():
    from editdecay.commands.finetune import config_from_args
    from editdecay.finetune.config import FinetuneConfig

    args = build_parser().parse_args(["finetune", "--model", "m", "--out", "o", "--type", "full",
                                      "--set", "lr=5e-1", "--set", "warmup-steps=010",
                                      "--set", "train_extra=[norms]"])
    cfg = FinetuneConfig.from_dict(config_from_args(args))
    assert cfg.lr == 0.5 and cfg.warmup_steps == 10 and cfg.train_extra == ["norms"]
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        config_from_args(build_parser().parse_args(["finetune", "--model", "m", "--out", "o", "--set", "r"]))


def test_hparams_yaml_file_reads_like_set(tmp_path):
    """An --hparams YAML file goes through the same YAML 1.2 scalars as --set: `v_lr: 5e-1` is 0.5."""
    from editdecay.edit.hparams import load_hparams_file

    path = tmp_path / "hp.yaml"
    path.write_text("v_lr: 5e-1\nmom2_update_weight: 1.5e3\nlayers: [1, 2]\n")
    assert load_hparams_file(path) == {"v_lr": 0.5, "mom2_update_weight": 1500.0, "layers": [1, 2]}
