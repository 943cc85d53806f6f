"""Model registry: the embedded SmolLM2, checksums, folder and hub-id resolution, and the CLI."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from editdecay.cli import main as cli_main
from editdecay.errors import ModelError
from editdecay.models import registry


@pytest.mark.real
def test_smollm2_completes_paris(smollm2):
    model, tok = smollm2
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    completion = tok.decode(out[0, ids.input_ids.shape[1]:])
    assert completion.startswith(" Paris"), completion
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert model.config.hidden_size == 576


@pytest.mark.real
def test_converted_folder_is_plain_safetensors_and_loads_fast(smollm2_path):
    names = {p.name for p in smollm2_path.iterdir()}
    assert "model.safetensors" in names and registry.MARKER in names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    marker = json.loads((smollm2_path / registry.MARKER).read_text())
    assert len(marker["source_sha256"]) == 64 and marker["files"]["model.safetensors"]["sha256"]
    registry.resolve_model("smollm2-135m", verify=True)  # full re-hash passes
    start = time.perf_counter()
    registry.load_model("smollm2-135m")
    assert time.perf_counter() - start < 3.0  # well under a second on an idle machine; 3 s leaves room for load


def test_checksum_mismatch_detected(tmp_path):
    folder = tmp_path / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"abc")
    (folder / registry.MARKER).write_text(json.dumps({"files": {"model.safetensors": {"bytes": 3, "sha256": "0" * 64}}}))
    with pytest.raises(ModelError, match="sha256"):
        registry.resolve_model("smollm2-135m", home=tmp_path, verify=True)
    (folder / "model.safetensors").write_bytes(b"abcd")
    with pytest.raises(ModelError, match="wrong size"):
        registry.resolve_model("smollm2-135m", home=tmp_path)


def test_local_folder_and_errors(tmp_path, make_tiny, monkeypatch):
    model, tok = make_tiny("gpt2", n_layers=1)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    loaded, loaded_tok = registry.load_model(tmp_path / "tiny")
    assert type(loaded).__name__ == "GPT2LMHeadModel" and loaded_tok.pad_token is not None
    with pytest.raises(ModelError, match="does not exist"):
        registry.resolve_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        registry.resolve_model(tmp_path / "empty")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        registry.load_model("some-org/not-a-local-model")
    assert "local folder" in str(info.value) and "smollm2-135m" in str(info.value)


def test_editdecay_home(monkeypatch, tmp_path):
    monkeypatch.setenv("EDITDECAY_HOME", str(tmp_path / "h"))
    assert registry.editdecay_home() == tmp_path / "h"
    monkeypatch.delenv("EDITDECAY_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert registry.editdecay_home() == tmp_path / "x" / "editdecay"


def test_unknown_registered_name():
    with pytest.raises(ModelError, match="registered"):
        registry.convert_registered("llama-70b")


def test_models_cli(capsys):
    assert cli_main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "gemma3-270m" in out and "EDITDECAY_HOME" in out


def test_every_subcommand_help(capsys):
    from editdecay.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"models", "data"} <= set(sub.choices)
    for name in sub.choices:
        with pytest.raises(SystemExit) as info:
            cli_main([name, "--help"])
        assert info.value.code == 0
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "usage: editdecay" in capsys.readouterr().out


@pytest.mark.real
def test_conversion_is_atomic_and_reused(tmp_path, smollm2_path, monkeypatch):
    """A second resolve does not convert again; a half-written temp folder never counts as ready."""
    home = tmp_path / "home"
    shutil.copytree(smollm2_path, home / "models" / "smollm2-135m")
    (home / "models" / ".smollm2-135m.abc.tmp").mkdir()
    monkeypatch.setattr(registry, "sha256_file", lambda *_: pytest.fail("must not re-convert"))
    assert registry.resolve_model("smollm2-135m", home=home) == home / "models" / "smollm2-135m"
    rows = {r["name"]: r for r in registry.model_status(home)}
    assert rows["smollm2-135m"]["ready"] and not rows["gemma3-270m"]["ready"]


@pytest.mark.real
def test_gemma3_second_registered_model():
    from editdecay.models.arch import get_adapter

    model, tok = registry.load_model("gemma3-270m")
    assert model.config.model_type == "gemma3_text" and model.config.num_hidden_layers == 18
    adapter = get_adapter(model)
    adapter.check(model)
    assert adapter.mlp_output_norm == "post_feedforward_layernorm"
    ids = tok("The Eiffel Tower is located in the city of", return_tensors="pt")
    assert ids.input_ids[0, 0].item() == tok.bos_token_id  # Gemma's tokenizer adds BOS
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, ids.input_ids.shape[1]:]).startswith(" Paris")


def _fake_conversion(tmp_path, make_tiny):
    """A tiny float32 folder laid out like a registered model's GGUF conversion (files + marker)."""
    model, tok = make_tiny("llama", n_layers=2)
    folder = tmp_path / "models" / "tiny-registered"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": registry.sha256_file(p)} for p in sorted(folder.iterdir())}
    (folder / registry.MARKER).write_text(json.dumps({"name": "tiny-registered", "source_sha256": "0" * 64,
                                                      "architecture": "llama", "files": files}))
    return folder, model


def test_a_registered_model_is_stored_once_in_the_dtype_it_loads_in(tmp_path, make_tiny):
    folder, model = _fake_conversion(tmp_path, make_tiny)
    loaded, _ = registry.load_model(folder, dtype="bfloat16")
    copy = tmp_path / "models" / "tiny-registered@bfloat16"
    assert (copy / registry.MARKER).exists() and (copy / "model.safetensors").stat().st_size < \
        0.6 * (folder / "model.safetensors").stat().st_size
    want = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    for key, value in loaded.state_dict().items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, want[key]), key  # the same cast, bit for bit
    stamp = (copy / "model.safetensors").stat().st_mtime_ns
    registry.load_model(folder, dtype="bfloat16")
    assert (copy / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert registry.in_dtype(folder, torch.float32) == folder  # float32 loads the converted files themselves
    assert registry.in_dtype(copy, torch.float16) == copy  # a dtype copy is not copied again
    # the float32 files change (a reconversion): the copy is rebuilt from them
    marker = json.loads((folder / registry.MARKER).read_text())
    marker["files"]["model.safetensors"]["sha256"] = "1" * 64
    (folder / registry.MARKER).write_text(json.dumps(marker))
    registry.load_model(folder, dtype="bfloat16")
    assert json.loads((copy / registry.MARKER).read_text())["from_files"] == marker["files"]


def test_a_plain_folder_loads_in_dtype_without_a_copy(tmp_path, make_tiny):
    model, tok = make_tiny("llama", n_layers=1)
    model.save_pretrained(tmp_path / "plain")
    tok.save_pretrained(tmp_path / "plain")
    loaded, _ = registry.load_model(tmp_path / "plain", dtype="bfloat16")
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]
