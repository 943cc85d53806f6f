"""The MEMIT and AlphaEdit repositories' hparams JSON files load as they are (issue 14).

The dicts below are the published files' contents: kmeng01/memit hparams/MEMIT/*.json and
jianghoucheng/AlphaEdit hparams/MEMIT/*.json, hparams/AlphaEdit/*.json (data, copied verbatim).
"""

from __future__ import annotations

import json
import warnings

import pytest

from editdecay.edit.hparams import (
    MODULE_KEYS,
    EditHparams,
    HparamsWarning,
    default_hparams,
    expected_modules,
    hparams_from_dict,
    resolve_hparams,
)
from editdecay.errors import ConfigError
from editdecay.models.arch import get_adapter

_GPT2 = {"rewrite_module_tmp": "transformer.h.{}.mlp.c_proj", "layer_module_tmp": "transformer.h.{}",
         "mlp_module_tmp": "transformer.h.{}.mlp", "attn_module_tmp": "transformer.h.{}.attn",
         "ln_f_module": "transformer.ln_f"}
_GPTJ = {"rewrite_module_tmp": "transformer.h.{}.mlp.fc_out", "layer_module_tmp": "transformer.h.{}",
         "mlp_module_tmp": "transformer.h.{}.mlp", "attn_module_tmp": "transformer.h.{}.attn",
         "ln_f_module": "transformer.ln_f", "lm_head_module": "lm_head"}
_LLAMA = {"rewrite_module_tmp": "model.layers.{}.mlp.down_proj", "layer_module_tmp": "model.layers.{}",
          "mlp_module_tmp": "model.layers.{}.mlp", "attn_module_tmp": "model.layers.{}.self_attn",
          "ln_f_module": "model.norm", "lm_head_module": "lm_head"}
_COMMON = {"layer_selection": "all", "fact_token": "subject_last", "v_weight_decay": 0.5, "kl_factor": 0.0625,
           "mom2_adjustment": True, "mom2_dataset": "wikipedia", "mom2_n_samples": 100000, "mom2_dtype": "float32",
           "clamp_norm_factor": 0.75}
_GPT2XL = {"layers": [13, 14, 15, 16, 17], "v_num_grad_steps": 20, "v_lr": 5e-1, "v_loss_layer": 47,
           "mom2_update_weight": 20000, **_COMMON}
_GPTJ6B = {"layers": [3, 4, 5, 6, 7, 8], "v_num_grad_steps": 25, "v_lr": 5e-1, "v_loss_layer": 27,
           "mom2_update_weight": 15000, **_COMMON}
_LLAMA3 = {"layers": [4, 5, 6, 7, 8], "v_num_grad_steps": 25, "v_lr": 1e-1, "v_loss_layer": 31,
           "mom2_update_weight": 15000, **_COMMON}
_ALPHA = {"nullspace_threshold": 2e-2, "L2": 10}

# (method, table key / architecture, number of layers, file contents)
REFERENCE_FILES = {
    "memit/MEMIT/gpt2-xl.json": ("memit", "gpt2-xl", 48, {**_GPT2XL, **_GPT2, "lm_head_module": "transformer.wte"}),
    "memit/MEMIT/EleutherAI_gpt-j-6B.json": ("memit", "gpt-j-6b", 28, {**_GPTJ6B, **_GPTJ}),
    "AlphaEdit/MEMIT/gpt2-xl.json": ("memit", "gpt2-xl", 48,
                                     {"model_name": "gpt2-xl", **_GPT2XL, **_GPT2, "lm_head_module": "lm_head"}),
    "AlphaEdit/MEMIT/EleutherAI_gpt-j-6B.json": ("memit", "gpt-j-6b", 28,
                                                 {"model_name": "EleutherAI_gpt-j-6B", **_GPTJ6B, **_GPTJ}),
    "AlphaEdit/MEMIT/Llama3-8B.json": ("memit", "llama3-8b", 32, {"model_name": "Llama3-8B", **_LLAMA3, **_LLAMA}),
    "AlphaEdit/AlphaEdit/gpt2-xl.json": ("alphaedit", "gpt2-xl", 48, {"model_name": "gpt2-xl", **_GPT2XL, **_GPT2,
                                                                     "lm_head_module": "lm_head", **_ALPHA}),
    "AlphaEdit/AlphaEdit/EleutherAI_gpt-j-6B.json": ("alphaedit", "gpt-j-6b", 28,
                                                     {"model_name": "EleutherAI_gpt-j-6B", **_GPTJ6B, **_GPTJ, **_ALPHA}),
    "AlphaEdit/AlphaEdit/Llama3-8B.json": ("alphaedit", "llama3-8b", 32,
                                           {"model_name": "Llama3-8B", **_LLAMA3, **_LLAMA, **_ALPHA}),
}
ARCH = {"gpt2-xl": "gpt2", "gpt-j-6b": "gptj", "llama3-8b": "llama"}
READ = ("layers", "v_num_grad_steps", "v_lr", "v_loss_layer", "v_weight_decay", "kl_factor", "clamp_norm_factor",
        "mom2_update_weight", "mom2_n_samples", "mom2_dtype", "layer_selection", "fact_token")


def _config(arch: str, n_layers: int, tied: bool = True):
    """A toy config of ``arch``; tied like the published GPT-2 XL / GPT-J / Llama-3 configs (GPT-2 ties)."""
    from editdecay.models.tiny import tiny_config

    config = tiny_config(arch, vocab_size=512, n_layers=n_layers)
    config.tie_word_embeddings = tied and arch == "gpt2"
    return config


def _resolve(method, model, values):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hp = resolve_hparams(method, model, values)
    return hp, [str(w.message) for w in caught if issubclass(w.category, HparamsWarning)]


@pytest.mark.parametrize("name", sorted(REFERENCE_FILES))
def test_reference_file_loads_with_its_values(name, tmp_path):
    method, key, n_layers, data = REFERENCE_FILES[name]
    path = tmp_path / "h.json"
    path.write_text(json.dumps(data, indent=4))
    for model in (key, _config(ARCH[key], n_layers)):  # a table key, and a config of the architecture
        hp, notes = _resolve(method, model, str(path))
        assert hp.method == method
        for field in READ:
            assert getattr(hp, field) == data[field], field
        assert hp.mom2_dataset == ["wikipedia"]
        if method == "alphaedit":
            assert (hp.nullspace_threshold, hp.L2) == (data["nullspace_threshold"], data["L2"])
        assert len(notes) == 1
        for k in (*MODULE_KEYS, "mom2_adjustment"):
            assert k in notes[0]
        assert ("model_name" in notes[0]) == ("model_name" in data)
        assert f"adapter table's {ARCH[key]} row" in notes[0]


def test_module_templates_of_another_architecture_are_rejected():
    data = REFERENCE_FILES["memit/MEMIT/gpt2-xl.json"][3]
    with pytest.raises(ConfigError, match=r"hparams.rewrite_module_tmp: 'transformer.h.\{\}.mlp.c_proj'.*llama.*"
                                          r"model.layers.\{\}.mlp.down_proj.*arch.py"):
        _resolve("memit", _config("llama", 48), data)


def test_tied_unembedding_is_accepted_only_when_tied():
    data = {"lm_head_module": "transformer.wte"}
    _resolve("memit", _config("gpt2", 4), data)
    with pytest.raises(ConfigError, match="lm_head_module"):
        _resolve("memit", _config("gpt2", 4, tied=False), data)


def test_templates_without_a_model_are_reported_unchecked():
    _, notes = _resolve("memit", None, {"rewrite_module_tmp": "anything.{}"})
    assert "not checked" in notes[0]


def test_expected_modules_match_the_real_module_paths(make_tiny):
    """The templates the check expects name real modules of each architecture's tiny model."""
    for arch in ("llama", "gpt2", "gptj", "gpt_neox", "gemma3_text"):
        model, _ = make_tiny(arch, n_layers=2)
        names = dict(model.named_modules())
        for key, template in expected_modules(get_adapter(model)).items():
            assert template.format(1) in names, (arch, key, template)


def test_unknown_keys_still_fail():
    with pytest.raises(ConfigError, match="unknown hparams key.*v_lrr"):
        hparams_from_dict("memit", {"v_lrr": 0.1})


def test_added_fields_stay_out_of_to_dict_at_their_defaults():
    """Stage ids hash to_dict(): settings written before mom2_n_samples / mom2_allow_short keep their ids."""
    hp = default_hparams("memit", "smollm2-135m")
    keys = set(hp.to_dict())
    assert "mom2_n_samples" not in keys and "mom2_allow_short" not in keys
    assert keys == {f for f in EditHparams.__dataclass_fields__} - {"mom2_n_samples", "mom2_allow_short"} | {"method"}
    set_hp = hparams_from_dict("memit", {"mom2_n_samples": 500, "mom2_allow_short": True}, hp)
    assert set_hp.to_dict()["mom2_n_samples"] == 500 and set_hp.to_dict()["mom2_allow_short"] is True
    assert hparams_from_dict("memit", set_hp.to_dict()).mom2_n_samples == 500  # round trip


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "100"])
def test_mom2_n_samples_is_validated(bad):
    with pytest.raises(ConfigError, match="hparams.mom2_n_samples"):
        hparams_from_dict("memit", {"mom2_n_samples": bad})


def test_print_hparams_cli_with_the_reference_file(tmp_path, capsys):
    from editdecay.cli import main

    _, _, _, data = REFERENCE_FILES["memit/MEMIT/gpt2-xl.json"]
    (tmp_path / "h.json").write_text(json.dumps(data))
    _config("gpt2", 48).save_pretrained(tmp_path / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HparamsWarning)
        rc = main(["edit", "--model", str(tmp_path / "model"), "--method", "memit", "--hparams", str(tmp_path / "h.json"),
                   "--out", str(tmp_path / "out"), "--print-hparams"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["mom2_n_samples"] == 100000 and printed["layers"] == [13, 14, 15, 16, 17]
