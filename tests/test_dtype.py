"""bfloat16 (and float16) models through every stage on tiny models of every architecture in the adapter table.

What is checked: the editing maths stays float32/float64 while the weights are bf16 (deltas float32, the
edited weight is W + ΔW rounded once, second moments float64 and close to the float32 model's), a bf16 edit
solves the same problem as the float32 edit of the same model, bf16 fine-tuning keeps float32 masters and
optimizer state and resumes bit-identically, and evaluation, loading and the CLI honour --dtype.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers.edits import FACTS, RECORDS, sharpen
from safetensors.torch import load_file

from editdecay.artifacts import read_deltas
from editdecay.data.records import EditRecord
from editdecay.edit.api import edit
from editdecay.edit.hparams import hparams_from_dict
from editdecay.edit.keys import compute_keys, subject_pass
from editdecay.edit.memit import MemitRule
from editdecay.edit.prompts import Encoder, Request, SubjectPrompts
from editdecay.edit.spread import apply_update
from editdecay.edit.stats import second_moments
from editdecay.edit.targets import compute_targets
from editdecay.errors import ConfigError
from editdecay.evaluate.api import evaluate_model
from editdecay.finetune.api import finetune
from editdecay.models.arch import get_adapter
from editdecay.models.registry import load_model
from editdecay.models.tiny import TINY_ARCHS

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread: see conftest.py

FAST = dict(layers=[1, 2], mom2_n_tokens=800, mom2_seq_len=64, v_num_grad_steps=5,
            context_template_length_params=[[6, 2]])
FT = {"batch_size": 2, "max_length": 64, "warmup_steps": 0}


def _bf16(model):
    return model.to(torch.bfloat16)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_bf16_spreading_lands_on_targets_like_float32(make_tiny, arch):
    """A bf16 model, every architecture: z is optimised (float32 δ) and raises the target probability, the update
    lands the hidden state on z up to bf16 rounding, the weight is exactly W + ΔW rounded once, deltas are
    float32; and given the same targets, the values ΔW·K it writes equal the float32 model's edit."""
    model32, tok = make_tiny(arch)
    sharpen(model32)
    model16 = _bf16(copy.deepcopy(model32))
    keys_model = copy.deepcopy(model32)
    adapter = get_adapter(model16)
    hp = hparams_from_dict("memit", dict(FAST, mom2_update_weight=1e-4, max_condition=1e16))
    requests = [Request.from_record(r) for r in RECORDS]
    bare = [["{}"]]  # keys of the bare prompt only: the update must then reproduce the targets exactly
    before = {k: v.clone() for k, v in model16.state_dict().items()}
    targets = compute_targets(model16, tok, adapter, requests, bare, hp, cache=None)
    assert targets.z.dtype == torch.float32 and min(targets.prob) > 0
    deltas = {}
    for m in (model16, model32):
        cov = second_moments(m, tok, adapter, hp.layers, n_tokens=hp.mom2_n_tokens, seq_len=64, cache=None).cov
        assert all(c.dtype == torch.float64 for c in cov.values())
        deltas[m.dtype] = apply_update(m, tok, adapter, requests, bare, hp, targets,
                                       MemitRule(cov, hp.mom2_update_weight, hp.max_condition))
    prompts = SubjectPrompts.build(Encoder(tok), requests, bare)
    res = subject_pass(model16, adapter, prompts, key_layers=[1], z_layer=2)
    left = (targets.z - res.z_out).norm(dim=-1) / (targets.z - targets.h_init).norm(dim=-1)
    assert left.max() < (0.5 if arch == "gemma3_text" else 0.05), left  # Gemma: see test_edit_tiny.py
    after = model16.state_dict()
    assert {k for k in after if not torch.equal(after[k], before[k])} == set(deltas[torch.bfloat16])
    for name, delta in deltas[torch.bfloat16].items():
        assert delta.dtype == torch.float32 and delta.device.type == "cpu" and after[name].dtype == torch.bfloat16
        torch.testing.assert_close(after[name], (before[name].float() + delta).to(torch.bfloat16), rtol=0, atol=0)
        if arch == "gemma3_text":
            continue  # its norm inversion amplifies bf16 rounding of the unreachable part of the residual
        layer = int(next(t for t in name.split(".") if t.isdigit()))
        k = compute_keys(keys_model, tok, adapter, layer, requests, bare)  # [n, d_in]
        v16 = adapter.as_out_in(delta) @ k.T
        v32 = adapter.as_out_in(deltas[torch.float32][name]) @ k.T
        assert float((v16 - v32).norm() / v32.norm()) < 0.05, name


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_bf16_alphaedit_update_like_float32(make_tiny, arch):
    """AlphaEdit on a bf16 model: float64 projections of the same rank and float64 K_pK_pᵀ; given the same
    targets it writes the float32 model's values ΔW·K; edit() runs end to end in bf16."""
    from editdecay.edit.alphaedit import AlphaEditRule, AlphaEditState

    model32, tok = make_tiny(arch)
    model16 = _bf16(copy.deepcopy(model32))
    keys_model = copy.deepcopy(model32)
    adapter = get_adapter(model16)
    hp = hparams_from_dict("alphaedit", dict(FAST, nullspace_threshold=1e-3))
    requests = [Request.from_record(r) for r in RECORDS]
    templates = [["{}"], ["The cat sat on the mat. {}"]]
    targets = compute_targets(model32, tok, adapter, requests, templates, hp, cache=None)
    states, deltas = {}, {}
    for m in (model16, model32):
        cov = second_moments(m, tok, adapter, hp.layers, n_tokens=hp.mom2_n_tokens, seq_len=64, cache=None).cov
        states[m.dtype] = AlphaEditState.from_stats(cov, hp.nullspace_threshold, device="cpu")
        deltas[m.dtype] = apply_update(m, tok, adapter, requests, templates, hp, targets,
                                       AlphaEditRule(states[m.dtype], hp.L2))
    s16, s32 = states[torch.bfloat16], states[torch.float32]
    for layer, proj in s16.projections.items():
        assert (proj.basis if proj.basis is not None else proj.full).dtype == torch.float64
        assert s16.prev_cov[layer].dtype == torch.float64
        assert abs(proj.rank - s32.projections[layer].rank) <= 1
    for name, delta in deltas[torch.bfloat16].items():
        layer = int(next(t for t in name.split(".") if t.isdigit()))
        k = compute_keys(keys_model, tok, adapter, layer, requests, templates)
        v16, v32 = adapter.as_out_in(delta) @ k.T, adapter.as_out_in(deltas[torch.float32][name]) @ k.T
        assert float((v16 - v32).norm() / v32.norm()) < 0.1, name
    result = edit(_bf16(make_tiny(arch)[0]), tok, RECORDS, method="alphaedit", overrides=FAST, stats_cache=False,
                  targets_cache=False, progress=False)
    assert all(d.dtype == torch.float32 and torch.isfinite(d).all() for d in result.deltas.values())


def test_second_moments_of_bf16_model_are_float64_and_close(make_tiny):
    model32, tok = make_tiny("llama")
    model16 = _bf16(copy.deepcopy(model32))
    adapter = get_adapter(model32)
    kw = dict(n_tokens=800, seq_len=64, cache=None, progress=False)
    c32 = second_moments(model32, tok, adapter, [1, 2], **kw).cov
    c16 = second_moments(model16, tok, adapter, [1, 2], **kw).cov
    for layer in (1, 2):
        assert c16[layer].dtype == torch.float64
        rel = float((c16[layer] - c32[layer]).norm() / c32[layer].norm())
        assert rel < 0.05, rel  # bf16 activations differ by ~1%; the Gram matrix itself is float32


def test_second_moments_of_bf16_model_are_its_keys_outer_products(make_tiny):
    """A bf16 model's C is E[k kᵀ] of its own bf16 keys, formed in float32 and summed in float64 (the in-place
    accumulation adds each batch's float32 Gram matrix to the float64 sum without a float64 copy)."""
    from helpers.reference import token_windows

    model, tok = make_tiny("llama", n_layers=2)
    model = _bf16(model)
    adapter = get_adapter(model)
    res = second_moments(model, tok, adapter, [1], n_tokens=300, seq_len=50, cache=None, progress=False)
    seen = []
    handle = adapter.rewrite_module(model, 1).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        for w in token_windows(tok, ["wikitext", "wikipedia"], 300, 50):
            model(input_ids=torch.tensor([w]))
    handle.remove()
    keys = torch.cat([k.reshape(-1, k.shape[-1]) for k in seen])
    assert keys.dtype == torch.bfloat16 and keys.shape[0] == 300
    keys = keys.double()  # bf16 -> float64 is exact
    assert res.cov[1].dtype == torch.float64
    torch.testing.assert_close(res.cov[1], keys.T @ keys / keys.shape[0], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_half_precision_cpu_z_optimisation_runs_eager_attention(make_tiny, monkeypatch, arch):
    """A bf16 model on the CPU optimises z with eager attention (torch's CPU sdpa backward is slow in bf16) and
    gets its own implementation back; a float32 model keeps sdpa, so its results do not change; the bf16 z
    land within bf16 rounding of the float32 model's z."""
    from editdecay.edit import targets as targets_mod
    from editdecay.models import device as device_mod

    model32, tok = make_tiny(arch)
    sharpen(model32)
    model16 = _bf16(copy.deepcopy(model32))
    assert model16.config._attn_implementation == model32.config._attn_implementation == "sdpa"
    seen = []
    real = targets_mod._optimise_chunk

    def spy(model, *args, **kwargs):
        seen.append(model.config._attn_implementation)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(targets_mod, "_optimise_chunk", spy)
    hp = hparams_from_dict("memit", FAST)
    requests = [Request.from_record(r) for r in RECORDS]
    templates = [["{}"], ["The cat sat on the mat. {}"]]
    t32 = compute_targets(model32, tok, get_adapter(model32), requests, templates, hp, cache=None)
    t16 = compute_targets(model16, tok, get_adapter(model16), requests, templates, hp, cache=None)
    assert seen == ["sdpa", "eager"]
    assert model16.config._attn_implementation == model32.config._attn_implementation == "sdpa"
    assert device_mod.backward_attention(model32) is None and device_mod.backward_attention(model16) == "eager"
    assert t16.z.dtype == torch.float32 and t16.steps == t32.steps
    for a, b, h in zip(t16.z, t32.z, t32.h_init, strict=True):
        assert float((a - b).norm() / (b - h).norm()) < 0.05  # measured <= 0.03 (sdpa in bf16: up to 0.4 on gpt2)
    assert t16.prob == pytest.approx(t32.prob, rel=0.05, abs=1e-4)


def test_bf16_full_finetune_keeps_float32_masters(make_tiny, tmp_path, tiny_tok):
    """Updates far below bf16's resolution accumulate in the float32 masters instead of rounding away, the
    optimizer state is float32, the saved model is bf16, and a run interrupted mid-way resumes bit-identically."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Fact {i}: ", "response": f"the value is {i}"}) + "\n"
                            for i in range(8)))
    cfg = {**FT, "data": str(data), "type": "full", "layers": [1], "modules": "mlp", "max_steps": 4, "lr": 1e-3,
           "checkpoint_every": 2}
    model, tok = make_tiny("llama")
    _bf16(model)
    w0 = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    manifest = finetune(model, cfg, tmp_path / "full", tokenizer=tok, progress=False)
    assert manifest["dtype"] == "bfloat16" and manifest["steps"] == 4
    saved = load_file(str(tmp_path / "full" / "model.safetensors"))
    w1 = saved["model.layers.1.mlp.down_proj.weight"]
    assert w1.dtype == torch.bfloat16 and not torch.equal(w1, w0)
    assert torch.equal(saved["model.layers.0.mlp.down_proj.weight"], model.model.layers[0].mlp.down_proj.weight)

    # interrupted after step 3 (checkpoint at 2): the float32 masters and moments come back exactly
    def crash(step, _row):
        if step == 3:
            raise RuntimeError("power cut")

    m2, _ = make_tiny("llama")
    with pytest.raises(RuntimeError):
        finetune(_bf16(m2), cfg, tmp_path / "resumed", tokenizer=tok, progress=False, on_step=crash)
    ckpt = tmp_path / "resumed.partial" / "checkpoint"
    assert load_file(str(ckpt / "trainable.safetensors"))["model.layers.1.mlp.down_proj.weight"].dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in load_file(str(ckpt / "optimizer.safetensors")).values())
    m3, _ = make_tiny("llama")
    again = finetune(_bf16(m3), cfg, tmp_path / "resumed", tokenizer=tok, progress=False)
    assert again["resumed_from"] == 2
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert torch.equal(resumed["model.layers.1.mlp.down_proj.weight"], w1)


def test_master_weights_keep_updates_below_bf16_resolution():
    """Twenty updates of 1e-4 on a weight of 1.0 (bf16 spacing 2^-7 ≈ 0.0078): the plain bf16 weight never
    moves, the master-weight path moves by 0.002 and the model follows once it crosses a bf16 step."""
    from editdecay.finetune.precision import MasterWeights

    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    plain = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    mw = MasterWeights([("w", p)])
    (master,) = [m for _, m in mw.named]
    assert master.dtype == torch.float32
    opt = torch.optim.SGD([master], lr=1e-4)
    plain_opt = torch.optim.SGD([plain], lr=1e-4)
    for _ in range(20):
        (p.float().sum()).backward()
        mw.grads_to_master()
        assert p.grad is None and master.grad.dtype == torch.float32
        opt.step()
        mw.master_to_model()
        opt.zero_grad()
        plain.float().sum().backward()
        plain_opt.step()
        plain_opt.zero_grad()
    assert torch.equal(plain.detach(), torch.ones(4, dtype=torch.bfloat16))
    torch.testing.assert_close(master.detach(), torch.full((4,), 1 - 20e-4), rtol=0, atol=1e-6)
    assert torch.equal(p.detach(), master.detach().to(torch.bfloat16))


def test_bf16_lora_trains_float32_adapters_over_frozen_bf16_base(make_tiny, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}: ", "response": f"answer {i}"}) + "\n" for i in range(6)))
    model, tok = make_tiny("gpt2")
    _bf16(model)
    cfg = {**FT, "data": str(data), "type": "lora", "layers": "all", "max_steps": 2, "lr": 1e-2}
    manifest = finetune(model, cfg, tmp_path / "lora", tokenizer=tok, progress=False)
    adapter = load_file(str(tmp_path / "lora" / "adapter" / "adapter_model.safetensors"))
    assert adapter and all(t.dtype == torch.float32 for t in adapter.values())
    assert any(float(t.abs().sum()) > 0 for k, t in adapter.items() if "lora_B" in k)
    assert manifest["dtype"] == "bfloat16"


def test_float16_finetune_refused_naming_the_flag(make_tiny, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "a ", "response": "b"}) + "\n")
    model, tok = make_tiny("llama")
    model.to(torch.float16)
    cfg = {**FT, "data": str(data), "type": "full", "layers": [0], "modules": "mlp", "max_steps": 1}
    with pytest.raises(ConfigError, match="--dtype float16"):
        finetune(model, cfg, tmp_path / "out", tokenizer=tok, progress=False)


@pytest.fixture
def tiny_folder(make_tiny, tmp_path):
    model, tok = make_tiny("llama")
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("dtype", ["bfloat16", "bf16", "float16", torch.bfloat16])
def test_load_model_dtype(tiny_folder, dtype):
    model, _ = load_model(tiny_folder, dtype=dtype, device="cpu")
    want = torch.float16 if dtype == "float16" else torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {want}


def test_evaluate_model_in_bf16_close_to_float32(tiny_folder):
    recs = [EditRecord(case_id=str(i), subject=s, prompt=p, target_new=t, target_true="France", dataset="counterfact")
            for i, (s, p, t) in enumerate(FACTS)]
    e32 = evaluate_model(tiny_folder, records=recs, progress=False, device="cpu")
    e16 = evaluate_model(tiny_folder, records=recs, progress=False, device="cpu", dtype="bfloat16")
    assert e32["dtype"] == "float32" and e16["dtype"] == "bfloat16"
    for row32, row16 in zip(e32["records"], e16["records"], strict=True):
        assert row16["efficacy_magnitude"] == pytest.approx(row32["efficacy_magnitude"], abs=5e-4)


def test_edit_command_with_dtype(tiny_folder, tmp_path, monkeypatch):
    from editdecay.cli import main

    records = tmp_path / "facts.jsonl"
    records.write_text("".join(json.dumps({"subject": s, "prompt": p, "target_new": t}) + "\n" for s, p, t in FACTS))
    out = tmp_path / "edited"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sets = [x for k, v in dict(mom2_n_tokens=800, mom2_seq_len=64, v_num_grad_steps=3).items()
            for x in ("--set", f"{k}={v}")]
    rc = main(["edit", "--model", str(tiny_folder), "--records", str(records), "--layers", "1,2", *sets,
               "--set", "context_template_length_params=[[6,2]]", "--dtype", "bf16", "--device", "cpu",
               "--stats-dir", str(tmp_path / "stats"), "--quiet", "--out", str(out)])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == "bfloat16"
    # the deltas keep full precision in a bf16 edit: dense float32, or float64 factors (editdecay.deltas)
    stored = load_file(str(out / "deltas.safetensors"))
    assert stored and all(t.dtype == (torch.float64 if "@" in k else torch.float32) for k, t in stored.items())
    assert all(t.dtype == torch.float32 for t in read_deltas(out).values())
    with pytest.raises(SystemExit):  # argparse names the flag and the choices
        main(["edit", "--model", str(tiny_folder), "--dtype", "float8", "--out", str(tmp_path / "x")])


X86_FLAGS = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma {extra}\n"


@pytest.mark.parametrize("extra, dtype, emulated", [
    ("", "bfloat16", True), ("", "float16", True), ("", "float32", False),
    ("avx512f avx512_bf16", "bfloat16", False), ("amx_bf16 amx_tile", "bfloat16", False),
    ("avx512_bf16", "float16", True), ("avx512_fp16", "float16", False),
])
def test_half_precision_is_called_emulated_only_where_the_cpu_lacks_its_instructions(extra, dtype, emulated):
    from editdecay.models.device import emulated_half_precision

    assert emulated_half_precision(dtype, X86_FLAGS.format(extra=extra)) is emulated
    assert emulated_half_precision(dtype, "processor\t: 0\nFeatures\t: fp asimd bf16\n") is False  # not x86: unknown
    assert emulated_half_precision(dtype, "") is False


def test_a_half_precision_model_on_such_a_cpu_loads_with_a_performance_warning(tmp_path, make_tiny, monkeypatch):
    import warnings

    import editdecay.models.device as device
    from editdecay.models.device import PerformanceWarning

    model, tok = make_tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    for cpu_lacks_bf16 in (True, False):
        monkeypatch.setattr(device, "emulated_half_precision", lambda dtype, cpuinfo=None, v=cpu_lacks_bf16: v)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded, _ = load_model(tmp_path / "m", device="cpu", dtype="bfloat16")
        assert next(loaded.parameters()).dtype == torch.bfloat16
        perf = [w for w in caught if issubclass(w.category, PerformanceWarning)]
        assert len(perf) == cpu_lacks_bf16
        if perf:
            assert "bfloat16 on this CPU" in str(perf[0].message) and "--dtype float32" in str(perf[0].message)
