"""The adapter table against real module shapes of tiny models of every supported architecture."""

from __future__ import annotations

import pytest
import torch

from editdecay.errors import ModelError
from editdecay.models.arch import ADAPTERS, get_adapter, supported_architectures
from editdecay.models.tiny import TINY_ARCHS


def test_table_covers_required_architectures():
    for arch in ("llama", "gemma3_text", "qwen2", "mistral", "gpt2", "gptj", "gpt_neox"):
        assert arch in ADAPTERS


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_adapter_matches_model(make_tiny, arch):
    model, tok = make_tiny(arch, n_layers=3)
    adapter = get_adapter(model)
    adapter.check(model)
    assert adapter.num_layers(model) == 3
    d_model = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    for i in range(3):
        module = adapter.rewrite_module(model, i)
        weight = adapter.as_out_in(module.weight)
        # the rewritten projection maps the MLP hidden size back to the residual stream: [d_model, d_mlp]
        assert weight.shape[0] == d_model
        assert weight.shape[1] > d_model
        # the adapter's name points at the same parameter the model exposes
        params = dict(model.named_parameters())
        assert params[adapter.rewrite_name(i) + ".weight"] is module.weight
    # orientation: applying the [out, in] view to an MLP hidden vector gives the module's output
    module = adapter.rewrite_module(model, 1)
    d_in = adapter.as_out_in(module.weight).shape[1]
    x = torch.randn(2, d_in)
    bias = module.bias if getattr(module, "bias", None) is not None else 0
    torch.testing.assert_close(module(x), x @ adapter.as_out_in(module.weight).T + bias)
    # every projection named for fine-tuning exists and is a weight-bearing module
    layer = adapter.layer(model, 0)
    for name in adapter.projection_names("attn,mlp"):
        sub = layer.get_submodule(name)
        assert hasattr(sub, "weight")
    assert isinstance(model.get_submodule(adapter.unembed).weight, torch.Tensor)
    model.get_submodule(adapter.final_norm)


def test_transposed_flag_only_for_conv1d(make_tiny):
    for arch in TINY_ARCHS:
        model, _ = make_tiny(arch, n_layers=1)
        adapter = get_adapter(model)
        is_conv1d = type(adapter.rewrite_module(model, 0)).__name__ == "Conv1D"
        assert adapter.rewrite_transposed == is_conv1d, arch


def test_unsupported_architecture_error_lists_supported_and_how_to_add():
    with pytest.raises(ModelError) as info:
        get_adapter("bloom")
    message = str(info.value)
    assert "bloom" in message
    for arch in supported_architectures():
        assert arch in message
    assert "ADAPTERS" in message


def test_layer_out_of_range(make_tiny):
    model, _ = make_tiny("llama", n_layers=2)
    with pytest.raises(ModelError, match="out of range"):
        get_adapter(model).layer(model, 5)


def test_projection_selection(make_tiny):
    model, _ = make_tiny("llama", n_layers=1)
    adapter = get_adapter(model)
    assert adapter.projection_names("attn") == list(adapter.attn_projections)
    assert adapter.projection_names("mlp") == list(adapter.mlp_projections)
    assert adapter.projection_names("q_proj,down_proj") == ["self_attn.q_proj", "mlp.down_proj"]
    with pytest.raises(ModelError, match="unknown module selection"):
        adapter.projection_names("nonsense")


def test_layer_list_parser():
    from editdecay.errors import ConfigError
    from editdecay.util.layers import parse_layer_list

    assert parse_layer_list("4,5,6") == [4, 5, 6]
    assert parse_layer_list("4-8") == [4, 5, 6, 7, 8]
    assert parse_layer_list("9, 4-6,4") == [4, 5, 6, 9]
    for bad in ("x", "6-4", "-1", "", "4-"):
        with pytest.raises(ConfigError, match="--layers"):
            parse_layer_list(bad)
