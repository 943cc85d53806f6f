"""An adapter-only fine-tune's per-layer weight change is read without materialising the fine-tuned model: the
adapter's merge done per tensor (LoRA W + s·BA; DoRA rescaled to the learnt row norms) gives the numbers that
loading the merged model gives, for Linear (Llama) and Conv1D (GPT-2) weights."""

from __future__ import annotations

import json

import pytest

import editdecay.analyze.weights as weights
from editdecay.finetune.api import finetune

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread: see conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter_data") / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q{i}: ", "response": f"answer {i} is here"}) + "\n"
                            for i in range(8)))
    return str(path)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("ft_type", ["lora", "dora"])
def test_adapter_change_is_read_per_tensor_with_the_merged_models_numbers(make_tiny, tmp_path, data, monkeypatch,
                                                                         arch, ft_type):
    model, tok = make_tiny(arch)
    model.save_pretrained(tmp_path / "in")
    tok.save_pretrained(tmp_path / "in")
    cfg = {"data": data, "type": ft_type, "batch_size": 2, "max_length": 64, "warmup_steps": 0, "max_steps": 3,
           "lr": 5e-2, "r": 4}
    finetune(str(tmp_path / "in"), cfg, tmp_path / "ft", progress=False, adapter_only=True)
    assert weights._lazy_adapter(tmp_path / "ft") is not None

    def no_loading(*args, **kwargs):
        raise AssertionError("the fine-tuned model was materialised")

    with monkeypatch.context() as m:
        m.setattr("editdecay.models.registry.load_model", no_loading)
        lazy = weights.finetune_change(tmp_path / "in", tmp_path / "ft")
    monkeypatch.setattr(weights, "_lazy_adapter", lambda folder: None)  # force loading the merged model
    loaded = weights.finetune_change(tmp_path / "in", tmp_path / "ft")
    assert lazy.keys() == loaded.keys() and max(loaded.values()) > 1e-3
    assert lazy == pytest.approx(loaded, rel=1e-4, abs=1e-7)


def test_adapters_it_does_not_cover_are_materialised(make_tiny, tmp_path, data):
    model, tok = make_tiny("llama")
    model.save_pretrained(tmp_path / "in")
    tok.save_pretrained(tmp_path / "in")
    cfg = {"data": data, "type": "lora", "batch_size": 2, "max_length": 64, "warmup_steps": 0, "max_steps": 1,
           "r": 4}
    finetune(str(tmp_path / "in"), cfg, tmp_path / "ft", progress=False, adapter_only=True)
    config_file = tmp_path / "ft" / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "rank_pattern": {"q_proj": 2}}))
    assert weights._lazy_adapter(tmp_path / "ft") is None
