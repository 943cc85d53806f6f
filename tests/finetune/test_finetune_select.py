"""Fine-tuning pieces with closed forms: config checks, layer/module selection, schedules, tokenisation, loss."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.reference import token_loss_sum

from editdecay.data.corpora import TrainExample
from editdecay.errors import ConfigError, DataError
from editdecay.finetune import select as sel
from editdecay.finetune.config import DEFAULT_LR, FinetuneConfig, parse_layer_setting
from editdecay.finetune.data import IGNORE_INDEX, TrainData, encode_example
from editdecay.finetune.train import lr_at, total_steps, warmup_steps
from editdecay.models.arch import get_adapter
from editdecay.models.tiny import TINY_ARCHS
from editdecay.util.overrides import parse_value as parse_set_value

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread: see conftest.py


# --- config ---------------------------------------------------------------------------------------------


def test_defaults_are_the_studys():
    cfg = FinetuneConfig.from_dict({"type": "lora"})
    assert (cfg.r, cfg.alpha, cfg.dropout, cfg.learning_rate) == (32, 64, 0.05, 2e-4)
    assert FinetuneConfig.from_dict({"type": "dora"}).learning_rate == 2e-4
    assert FinetuneConfig.from_dict({"type": "full"}).learning_rate == DEFAULT_LR["full"] == 5e-6
    assert FinetuneConfig.from_dict({"type": "full", "lr": 1e-4}).learning_rate == 1e-4
    assert cfg.modules == "attn,mlp" and cfg.layers == "all"


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"typo_key": 1}, "typo_key"),
        ({"type": "qlora"}, "type"),
        ({"lr": -1.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"dropout": 1.5}, "dropout"),
        ({"schedule": "step"}, "schedule"),
        ({"layers": "first"}, "layers"),
        ({"layers": [3, -1]}, "layers"),
        ({"max_steps": 0}, "max_steps"),
        ({"train_extra": ["embed"], "type": "lora"}, "train_extra"),
        ({"train_extra": ["bias"], "type": "full"}, "train_extra"),
    ],
)
def test_bad_config_names_the_key(bad, key):
    with pytest.raises(ConfigError, match=key):
        FinetuneConfig.from_dict(bad)


def test_layer_specs_and_set_values():
    assert parse_layer_setting("4,5,6") == [4, 5, 6]
    assert parse_layer_setting("6-8,2") == [2, 6, 7, 8]
    assert parse_layer_setting("Non-Edited") == "non-edited"
    assert parse_set_value("5e-6") == 5e-6 and parse_set_value("16") == 16
    assert parse_set_value("null") is None and parse_set_value("cosine") == "cosine"
    assert parse_set_value("[embed, norms]") == ["embed", "norms"]


def test_run_hash_ignores_bookkeeping_only():
    a = FinetuneConfig.from_dict({"max_steps": 5})
    assert a.run_hash() == a.replace(checkpoint_every=7).run_hash()
    assert a.run_hash() != a.replace(seed=1).run_hash()
    assert a.run_hash() != a.replace(layers=[1]).run_hash()


# --- layer / module selection ----------------------------------------------------------------------------


def test_resolve_layers_words_and_lists():
    manifest = {"layers": [3, 1]}
    assert sel.resolve_layers("all", 5) == [0, 1, 2, 3, 4]
    assert sel.resolve_layers("edited", 5, manifest) == [1, 3]
    assert sel.resolve_layers("non-edited", 5, manifest) == [0, 2, 4]
    assert sel.resolve_layers([4, 0], 5) == [0, 4]
    with pytest.raises(ConfigError, match="needs an edit manifest"):
        sel.resolve_layers("edited", 5)
    with pytest.raises(ConfigError, match="out of range"):
        sel.resolve_layers([5], 5)
    with pytest.raises(ConfigError, match="outside"):
        sel.resolve_layers("edited", 2, manifest)


def test_read_edit_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="no edit manifest"):
        sel.read_edit_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"layers": "4"}')
    with pytest.raises(DataError, match="'layers'"):
        sel.read_edit_manifest(tmp_path)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_selection_on_every_architecture(make_tiny, arch):
    """Full FT trains exactly the selected projections' weights/biases; LoRA targets the same full module names."""
    model, _ = make_tiny(arch, n_layers=3)
    adapter = get_adapter(model)
    cfg = FinetuneConfig.from_dict({"type": "full", "layers": [0, 2], "modules": "mlp"})
    selection = sel.select(model, cfg)
    assert selection.module_names == [f"{adapter.layers}.{i}.{p}" for i in (0, 2) for p in adapter.mlp_projections]
    names = sel.full_trainable_names(model, selection)
    expected = {f"{m}.{kind}" for m in selection.module_names for kind in ("weight", "bias")}
    assert set(names) == expected & set(dict(model.named_parameters()))
    assert not any(adapter.embed in n or adapter.unembed in n or "norm" in n for n in names)
    trained = sel.apply_full_selection(model, selection)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(trained)
    lcfg = sel.lora_config(model, selection, cfg.replace(type="dora"))
    assert set(lcfg.target_modules) == set(selection.module_names) and lcfg.use_dora
    assert lcfg.fan_in_fan_out == (arch == "gpt2")  # GPT-2 stores Conv1D weights [in, out]


def test_extras_and_named_projections(make_tiny):
    model, _ = make_tiny("llama", n_layers=3)
    cfg = FinetuneConfig.from_dict({"type": "full", "layers": [1], "modules": "q_proj,down_proj",
                                    "train_extra": ["norms", "embed"]})
    selection = sel.select(model, cfg)
    assert selection.projections == ["self_attn.q_proj", "mlp.down_proj"]
    names = set(sel.full_trainable_names(model, selection))
    assert names == {"model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
                     "model.layers.1.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight",
                     "model.norm.weight", "model.embed_tokens.weight"}
    with pytest.raises(ConfigError, match="modules"):
        sel.select(model, cfg.replace(modules="attn,ffn", train_extra=[]))


def test_count_per_layer():
    adapter = get_adapter("llama")
    named = [("base_model.model.model.layers.2.mlp.up_proj.lora_A.default.weight", 10),
             ("model.layers.2.mlp.up_proj.weight", 5), ("model.layers.10.x", 1), ("lm_head.weight", 7)]
    assert sel.count_per_layer(named, adapter) == {"2": 15, "10": 1, "other": 7}


# --- schedules -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_lr_matches_transformers_schedulers(schedule):
    from transformers import get_scheduler

    total, warm, base = 20, 4, 1e-3
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    name = "constant_with_warmup" if schedule == "constant" else schedule
    sched = get_scheduler(name, opt, num_warmup_steps=warm, num_training_steps=total)
    for step in range(total):
        assert lr_at(step, total, warm, base, schedule) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()
    # closed forms: half-way through decay the cosine is at base/2 and the linear at base/2
    assert lr_at(12, 20, 4, 1.0, "cosine") == pytest.approx(0.5)
    assert lr_at(12, 20, 4, 1.0, "linear") == pytest.approx(0.5)
    assert lr_at(2, 20, 4, 1.0, schedule) == pytest.approx(0.5)


def test_step_counts(tiny_tok):
    data = TrainData([TrainExample("p", "r")] * 10, tiny_tok, 32, batch_size=3, seed=0)
    assert data.batches_per_epoch == 4
    cfg = FinetuneConfig.from_dict({"epochs": 2, "grad_accum": 2})
    assert total_steps(cfg, data) == 4
    assert total_steps(cfg.replace(max_steps=7), data) == 7
    assert warmup_steps(cfg.replace(warmup_ratio=0.1), 25) == 3
    assert warmup_steps(cfg.replace(warmup_steps=5), 25) == 5


# --- data ------------------------------------------------------------------------------------------------


def test_encode_response_only_loss(tiny_tok, tiny_tok_bos):
    ex = TrainExample("Question: sky colour?\n", "blue")
    enc = encode_example(ex, tiny_tok, 64)
    p = tiny_tok(ex.prompt)["input_ids"]
    r = tiny_tok(ex.response, add_special_tokens=False)["input_ids"]
    assert enc.input_ids == p + r + [tiny_tok.eos_token_id]
    assert enc.labels == [IGNORE_INDEX] * len(p) + r + [tiny_tok.eos_token_id]
    cut = encode_example(ex, tiny_tok, len(p) + 1)
    assert cut.input_ids == (p + r)[: len(p) + 1] and cut.n_loss_tokens == 1
    text = encode_example(TrainExample("", "plain text"), tiny_tok_bos, 64)
    assert text.input_ids[0] == tiny_tok_bos.bos_token_id and text.labels[0] == IGNORE_INDEX
    assert text.n_loss_tokens == len(text.input_ids) - 1  # every text token but BOS


def test_encode_loss_on_the_whole_example_is_the_default(tiny_tok):
    """The study's (LLM-Adapters') train_on_inputs=True: prompt and response are targets; the config says so."""
    from editdecay.finetune.config import FinetuneConfig

    ex = TrainExample("Question: sky colour?\n", "blue")
    enc = encode_example(ex, tiny_tok, 64, train_on_inputs=True)
    assert enc.labels == [IGNORE_INDEX] + enc.input_ids[1:]
    assert enc.n_loss_tokens == len(enc.input_ids) - 1 > encode_example(ex, tiny_tok, 64).n_loss_tokens
    assert FinetuneConfig().train_on_inputs is True
    assert FinetuneConfig.from_dict({"train_on_inputs": False}).train_on_inputs is False
    with pytest.raises(ConfigError, match="train_on_inputs"):
        FinetuneConfig.from_dict({"train_on_inputs": "yes"})
    data = TrainData([ex] * 2, tiny_tok, 64, batch_size=2, seed=0, train_on_inputs=True)
    assert (data.batch(0)["labels"][:, 1:] != IGNORE_INDEX).all()


def test_order_is_seeded_and_resumable(tiny_tok):
    examples = [TrainExample(f"q{i}", f"a{i}") for i in range(7)]
    a = TrainData(examples, tiny_tok, 32, batch_size=2, seed=3)
    b = TrainData(examples, tiny_tok, 32, batch_size=2, seed=3)
    first_epoch = [i for m in range(4) for i in a.indices(m)]
    assert sorted(first_epoch) == list(range(7))  # an epoch covers every example once
    assert [b.indices(m) for m in (5, 1, 6)] == [a.indices(m) for m in (5, 1, 6)]  # position by index only
    assert a.epoch_order(0) != a.epoch_order(1)
    assert TrainData(examples, tiny_tok, 32, 2, seed=4).epoch_order(0) != a.epoch_order(0)
    batch = a.collate([0, 1])
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == int(lengths.max())
    short = int(lengths.argmin())
    assert (batch["labels"][short, int(lengths[short]):] == IGNORE_INDEX).all()


def test_token_loss_equals_mean_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, :2] = IGNORE_INDEX
    labels[1, 4] = IGNORE_INDEX
    picked = [(b, t) for b in range(2) for t in range(4) if labels[b, t + 1] != IGNORE_INDEX]
    expected = sum(-torch.log_softmax(logits[b, t], -1)[labels[b, t + 1]] for b, t in picked)
    assert float(token_loss_sum(logits, labels)) == pytest.approx(float(expected), rel=1e-6)
    assert len(picked) == 6 and not math.isnan(float(expected))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_logits_at_loss_positions_only_give_the_same_loss_and_grads(make_tiny, arch):
    """Unembedding only the labelled positions is an optimisation, not an approximation."""
    from editdecay.finetune.train import loss_positions_only

    model, tok = make_tiny(arch)
    data = TrainData([TrainExample("Question: sky colour? Answer:", " blue"), TrainExample("", "plain text here")],
                     tok, 64, batch_size=2, seed=0)
    batch = data.collate([0, 1])
    full = token_loss_sum(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                          batch["labels"])
    full.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    with loss_positions_only(model.lm_head, batch["labels"]) as tgt:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape[1] == len(tgt) == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    fast = torch.nn.functional.cross_entropy(logits[0], tgt, reduction="sum")
    fast.backward()
    torch.testing.assert_close(fast, full)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-5)
    assert not model.lm_head._forward_pre_hooks  # the hook is gone afterwards


def test_fused_adamw_is_the_adamw_update():
    """The fused optimizer the loop uses gives AdamW's closed-form first step: w - lr*(g/(|g|+eps)) - lr*wd*w."""
    from editdecay.finetune.train import build_optimizer

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    bias = torch.nn.Parameter(torch.randn(3))
    w0, b0 = w.detach().clone(), bias.detach().clone()
    w.grad, bias.grad = torch.randn(4, 3), torch.randn(3)
    cfg = FinetuneConfig.from_dict({"type": "full", "lr": 0.1, "weight_decay": 0.5, "adam_eps": 1e-8})
    opt = build_optimizer([("w", w), ("b", bias)], cfg)
    assert opt.defaults["fused"]
    opt.step()
    lr = 0.1
    # bias-corrected first Adam step: m_hat = g, v_hat = g^2 -> update g / (|g| + eps); decay only on matrices
    expected_w = w0 * (1 - lr * 0.5) - lr * w.grad / (w.grad.abs() + 1e-8)
    expected_b = b0 - lr * bias.grad / (bias.grad.abs() + 1e-8)
    torch.testing.assert_close(w.detach(), expected_w)
    torch.testing.assert_close(bias.detach(), expected_b)
