"""Fine-tuning on tiny models: exactly the chosen parameters change, adapters merge faithfully, runs resume."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.edits import tiny_edit_folder
from safetensors.torch import load_file

from editdecay.cli import main as cli_main
from editdecay.errors import ConfigError
from editdecay.finetune.api import finetune
from editdecay.models.arch import get_adapter

BASE = {"batch_size": 2, "max_length": 64, "warmup_steps": 0}


pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread: see conftest.py


@pytest.fixture(scope="module")
def short_data(tmp_path_factory):
    """Twelve short prompt/response pairs: the tests need real gradients, not long sequences."""
    path = tmp_path_factory.mktemp("ftdata") / "train.jsonl"
    facts = ["water boils at 100 degrees", "the sun rises in the east", "cats have four legs", "ice is cold",
             "Paris is in France", "two plus two is four", "the sky is blue", "bees make honey",
             "fish live in water", "snow is white", "birds can fly", "grass is green"]
    path.write_text("".join(json.dumps({"prompt": f"Fact {i}: ", "response": f}) + "\n" for i, f in enumerate(facts)))
    return str(path)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], folder) -> set[str]:
    after = load_file(str(folder / "model.safetensors"))
    missing = set(before) - set(after)
    assert not missing - {"lm_head.weight"}, f"saved model lacks {missing}"  # lm_head may be tied
    return {k for k in after if not torch.equal(after[k], before[k])}


@pytest.mark.parametrize("ft_type", ["full", "lora", "dora"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_only_selected_parameters_change(make_tiny, tmp_path, short_data, ft_type, arch):
    """Each layer selection (all, edited, non-edited, list): every weight outside it is bit-identical after training."""
    edit_dir = tmp_path / "edit"
    edit_dir.mkdir()
    (edit_dir / "manifest.json").write_text(json.dumps({"stage": "edit", "layers": [1, 2], "records": []}))
    for layers, expected_layers in (("all", [0, 1, 2, 3]), ("edited", [1, 2]), ("non-edited", [0, 3]), ([3], [3])):
        model, tok = make_tiny(arch)
        adapter = get_adapter(model)
        before = _state(model)
        out = tmp_path / f"{ft_type}-{layers}"
        cfg = {**BASE, "data": short_data, "type": ft_type, "layers": layers, "modules": "attn,mlp", "max_steps": 2, "lr": 1e-3}
        manifest = finetune(model, cfg, out, tokenizer=tok, edit_dir=edit_dir, progress=False)
        assert manifest["layers"] == expected_layers
        assert sorted(int(k) for k in manifest["trained_parameters"]) == expected_layers
        expected = {f"{adapter.layers}.{i}.{p}.weight" for i in expected_layers
                    for p in adapter.projection_names("attn,mlp")}
        if ft_type == "full" and arch == "gpt2":  # full FT also trains the projections' biases
            expected |= {n.replace(".weight", ".bias") for n in expected}
        assert _changed(before, out) == expected


def test_dora_magnitude_trains(make_tiny, tmp_path, short_data):
    """DoRA's magnitude starts at the row norms of W (closed form) and moves away from them with training."""
    model, tok = make_tiny("llama")
    weight = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    cfg = {**BASE, "data": short_data, "type": "dora", "layers": [1], "modules": "down_proj", "max_steps": 2, "lr": 1e-2}
    manifest = finetune(model, cfg, tmp_path / "out", tokenizer=tok, progress=False)
    adapter = load_file(str(tmp_path / "out" / "adapter" / "adapter_model.safetensors"))
    (name,) = [k for k in adapter if "magnitude" in k]
    assert any("magnitude" in n for n in manifest["trained_parameter_names"])
    init = torch.linalg.vector_norm(weight, dim=1)
    assert adapter[name].shape == init.shape
    assert not torch.allclose(adapter[name], init, atol=1e-6)
    # and the peft init really is that closed form: a zero-step model would keep it
    from peft import LoraConfig, get_peft_model

    fresh, _ = make_tiny("llama")
    peft_model = get_peft_model(fresh, LoraConfig(r=4, target_modules=["model.layers.1.mlp.down_proj"], use_dora=True))
    magnitude = peft_model.base_model.model.model.layers[1].mlp.down_proj.lora_magnitude_vector["default"].weight
    torch.testing.assert_close(magnitude, init)


@pytest.mark.parametrize("ft_type", ["lora", "dora"])
def test_merged_model_equals_adapter_model(make_tiny, tmp_path, short_data, ft_type):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tok = make_tiny("llama")
    cfg = {**BASE, "data": short_data, "type": ft_type, "layers": "all", "max_steps": 3, "lr": 5e-3}
    finetune(model, cfg, tmp_path / "out", tokenizer=tok, progress=False)
    base, _ = make_tiny("llama")
    with_adapter = PeftModel.from_pretrained(base, tmp_path / "out" / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = tok(["The capital of France is", "Answer format: true/false"], return_tensors="pt", padding=True)
    with torch.no_grad():
        a = with_adapter(**ids).logits
        b = merged(**ids).logits
        plain = make_tiny("llama")[0](**ids).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (a - plain).abs().max() > 1e-3  # the adapter did change the model


@pytest.mark.parametrize("train_on_inputs, atol", [(False, 1e-6), (True, 1e-5)])
def test_grad_accumulation_equals_big_batch(make_tiny, tmp_path, short_data, train_on_inputs, atol):
    """Token-weighted loss: 2 micro-batches of 1 give the same update as one batch of 2 (response-only loss,
    and the study's loss on the whole example, whose ~3x more loss tokens sum a little more float error)."""
    outs = []
    for bs, accum in ((2, 1), (1, 2)):
        model, tok = make_tiny("llama")
        cfg = {**BASE, "data": short_data, "type": "full", "layers": [1], "max_steps": 1, "lr": 1e-3, "batch_size": bs,
               "grad_accum": accum, "seed": 5, "train_on_inputs": train_on_inputs}
        finetune(model, cfg, tmp_path / f"bs{bs}", tokenizer=tok, progress=False)
        outs.append(load_file(str(tmp_path / f"bs{bs}" / "model.safetensors")))
    log_a = [json.loads(x) for x in (tmp_path / "bs2" / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "bs1" / "train_log.jsonl").read_text().splitlines()]
    assert sorted(log_a[0]["examples"]) == sorted(log_b[0]["examples"])
    assert log_a[0]["loss"] == pytest.approx(log_b[0]["loss"], rel=1e-5)
    for key in outs[0]:
        torch.testing.assert_close(outs[0][key], outs[1][key], atol=atol, rtol=1e-5)


def test_a_lora_fine_tune_and_its_merge_print_no_peft_deprecation_warning(make_tiny, tmp_path, short_data):
    """PEFT reads transformers' deprecated is_gradient_checkpointing on every adapter it wraps or loads; the grid
    printed that FutureWarning once per fine-tune and per adapter evaluation."""
    import warnings

    from editdecay.models.registry import load_model

    model, tok = make_tiny("llama")
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        finetune(str(tmp_path / "base"), {**BASE, "data": short_data, "type": "lora", "max_steps": 1}, tmp_path / "ft",
                 progress=False, adapter_only=True)
        load_model(str(tmp_path / "ft"))  # materialises: the adapter merged onto its base
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def _log(folder):
    return [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("ft_type", ["lora", "dora"])
def test_resume_after_crash_and_interrupt(make_tiny, tmp_path, short_data, ft_type):
    """A crash resumes from the last checkpoint, Ctrl-C from the step it stopped at; both end bit-identical."""
    cfg = {**BASE, "data": short_data, "type": ft_type, "layers": "all", "max_steps": 6, "grad_accum": 2, "max_examples": 10,
           "checkpoint_every": 2, "lr": 1e-3}  # 5 micro-batches an epoch: the run crosses an epoch boundary
    model, tok = make_tiny("llama")
    ref = finetune(model, cfg, tmp_path / "ref", tokenizer=tok, progress=False)
    assert ref["resumed_from"] == 0

    def crash_at(n, exc):
        def hook(step, row):
            if step == n:
                raise exc
        return hook

    for name, exc, stop, resumed in (("crash", RuntimeError("power cut"), 3, 2), ("ctrl-c", KeyboardInterrupt(), 5, 5)):
        out = tmp_path / name
        with pytest.raises(type(exc)):
            finetune(make_tiny("llama")[0], cfg, out, tokenizer=tok, progress=False, on_step=crash_at(stop, exc))
        assert not out.exists() and (tmp_path / f"{name}.partial" / "checkpoint" / "state.json").exists()
        manifest = finetune(make_tiny("llama")[0], cfg, out, tokenizer=tok, progress=False)
        assert manifest["resumed_from"] == resumed and manifest["steps"] == 6
        assert not (tmp_path / f"{name}.partial").exists()
        log, ref_log = _log(out), _log(tmp_path / "ref")
        assert [r["step"] for r in log] == list(range(1, 7))
        assert [r["examples"] for r in log] == [r["examples"] for r in ref_log]  # same data order
        assert [r["loss"] for r in log] == [r["loss"] for r in ref_log]
        for fname in ("model.safetensors", "adapter/adapter_model.safetensors"):
            a, b = load_file(str(tmp_path / "ref" / fname)), load_file(str(out / fname))
            assert all(torch.equal(a[k], b[k]) for k in a), fname


def _stopped_at_step_2(make_tiny, tmp_path, short_data, ft_type):
    """A 4-step run checkpointed every step and interrupted after step 2: (config, tokenizer, checkpoint folder)."""
    cfg = {**BASE, "data": short_data, "type": ft_type, "layers": "all", "max_steps": 4, "checkpoint_every": 1}
    model, tok = make_tiny("llama")

    def stop(step, row):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(model, cfg, tmp_path / "out", tokenizer=tok, progress=False, on_step=stop)
    return cfg, tok, tmp_path / "out.partial" / "checkpoint"


def test_a_checkpoint_whose_optimizer_state_does_not_fit_is_refused(make_tiny, tmp_path, short_data):
    """DoRA trains matrices and magnitude vectors; a moment of the wrong shape is a clear error, not a crash of
    the fused optimizer kernel (what a mis-ordered restore of DoRA's state once caused)."""
    from safetensors.torch import save_file

    cfg, tok, checkpoint = _stopped_at_step_2(make_tiny, tmp_path, short_data, "dora")
    state = load_file(str(checkpoint / "optimizer.safetensors"))
    vector = next(k for k, v in state.items() if k.endswith("exp_avg") and v.ndim == 1)
    state[vector] = torch.zeros(3, 3)
    save_file(state, str(checkpoint / "optimizer.safetensors"))
    with pytest.raises(ConfigError, match=r"optimizer state exp_avg of .* has shape \(3, 3\)"):
        finetune(make_tiny("llama")[0], cfg, tmp_path / "out", tokenizer=tok, progress=False)


def test_a_nan_loss_after_a_resume_names_the_checkpoint(make_tiny, tmp_path, short_data):
    """A loss that turns NaN right after a resume points at the checkpoint, not only at the learning rate."""
    from safetensors.torch import save_file

    from editdecay.errors import NumericalError

    cfg, tok, checkpoint = _stopped_at_step_2(make_tiny, tmp_path, short_data, "lora")
    weights = checkpoint / "trainable.safetensors"
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(str(weights)).items()}, str(weights))
    with pytest.raises(NumericalError, match=r"at step 3; lower the lr; this run resumed at step 2 from .*--overwrite"):
        finetune(make_tiny("llama")[0], cfg, tmp_path / "out", tokenizer=tok, progress=False)


def test_refuses_other_runs_and_reuses_finished(make_tiny, tmp_path, short_data):
    cfg = {**BASE, "data": short_data, "type": "lora", "layers": [0], "max_steps": 1}
    model, tok = make_tiny("llama")
    first = finetune(model, cfg, tmp_path / "out", tokenizer=tok, progress=False)
    again = finetune(make_tiny("llama")[0], cfg, tmp_path / "out", tokenizer=tok, progress=False)
    assert again["run_hash"] == first["run_hash"] and again["timings"] == first["timings"]  # not retrained
    with pytest.raises(ConfigError, match="different fine-tuning run"):
        finetune(make_tiny("llama")[0], {**cfg, "seed": 1}, tmp_path / "out", tokenizer=tok, progress=False)
    with pytest.raises(ConfigError, match="different fine-tuning run"):  # other base weights, same settings
        finetune(make_tiny("llama", seed=1)[0], cfg, tmp_path / "out", tokenizer=tok, progress=False)
    other = finetune(make_tiny("llama")[0], {**cfg, "seed": 1}, tmp_path / "out", tokenizer=tok, progress=False,
                     overwrite=True)
    assert other["run_hash"] != first["run_hash"] and other["config"]["seed"] == 1
    with pytest.raises(ConfigError, match="needs an edit manifest"):
        finetune(make_tiny("llama")[0], {**cfg, "layers": "edited"}, tmp_path / "o2", tokenizer=tok, progress=False)
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o2.partial").exists()  # no debris from bad input


def test_cli_contract_with_tracking(make_tiny, tmp_path, capsys):
    """`editdecay finetune --model EDIT_DIR ... --track-edits EDIT_DIR --eval-every K` on a tiny edit folder."""
    model, tok = make_tiny("llama")
    edit_dir = tmp_path / "edit"
    tiny_edit_folder(model, tok, edit_dir, [1, 2])
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}: ", "response": f"answer {i}"}) + "\n" for i in range(8)))
    out = tmp_path / "ft"
    argv = ["finetune", "--model", str(edit_dir), "--type", "lora", "--layers", "edited", "--data", str(data),
            "--max-steps", "5", "--track-edits", str(edit_dir), "--eval-every", "2", "--seed", "1",
            "--batch-size", "2", "--set", "r=4", "--set", "warmup_steps=0", "--set", "downstream_tasks=[boolq]",
            "--set", "downstream_n=4", "--threads", "1", "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layers"] == [1, 2] and set(manifest["trained_parameters"]) == {"1", "2"}
    assert manifest["config"]["r"] == 4 and manifest["tracked_records"] == 2
    assert manifest["edit_manifest"] == str(edit_dir / "manifest.json")
    trajectory = json.loads((out / "trajectory.json").read_text())
    assert [p["step"] for p in trajectory] == [0, 2, 4, 5]
    assert all(0.0 <= p[m] <= 1.0 for p in trajectory for m in ("efficacy", "paraphrase", "neighborhood"))
    assert all(set(p["downstream"]) == {"boolq"} and 0.0 <= p["downstream_mean"] <= 1.0 for p in trajectory)
    # the dose of fine-tuning at each point: training tokens seen, 0 before the first step, the run's total at the end
    seen = [p["tokens"] for p in trajectory]
    assert seen[0] == 0 and seen == sorted(seen) and seen[1] > 0 and seen[-1] == manifest["tokens"]
    assert (out / "adapter" / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)  # plain transformers loads the merged folder
    capsys.readouterr()
    assert cli_main(argv[:-3] + ["--set", "bogus=1", "--out", str(tmp_path / "x")]) == 1
    assert "bogus" in capsys.readouterr().err
    assert cli_main([a if a != "edited" else "9" for a in argv[:-3]] + ["--out", str(tmp_path / "y")]) == 1
    assert "out of range" in capsys.readouterr().err


def test_edit_folder_as_model_gives_edited_layers(make_tiny, tmp_path, short_data):
    """Without --track-edits, 'edited' layers come from the --model folder's own edit manifest."""
    model, tok = make_tiny("gpt_neox")
    edit_dir = tmp_path / "edit"
    tiny_edit_folder(model, tok, edit_dir, [0, 3])
    out = tmp_path / "ft"
    argv = ["finetune", "--model", str(edit_dir), "--type", "full", "--layers", "non-edited", "--modules", "mlp",
            "--data", short_data, "--max-steps", "1", "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layers"] == [1, 2] and manifest["edit_manifest"] == str(edit_dir / "manifest.json")
    assert manifest["trajectory"] is None and not (out / "trajectory.json").exists()
    assert all(".mlp." in n for n in manifest["trained_parameter_names"])


def test_tracked_run_resumes_with_the_same_trajectory(make_tiny, tmp_path, short_data):
    model, tok = make_tiny("llama")
    edit_dir = tmp_path / "edit"
    tiny_edit_folder(model, tok, edit_dir, [1])
    cfg = {**BASE, "data": short_data, "type": "lora", "layers": "edited", "max_steps": 5, "eval_every": 1,
           "checkpoint_every": 2, "lr": 5e-2}
    ref = finetune(make_tiny("llama")[0], cfg, tmp_path / "ref", track_edits=edit_dir, tokenizer=tok, progress=False)
    assert ref["tracked_records"] == 2

    def crash(step, row):
        if step == 3:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        finetune(make_tiny("llama")[0], cfg, tmp_path / "run", track_edits=edit_dir, tokenizer=tok, progress=False,
                 on_step=crash)
    partial = json.loads((tmp_path / "run.partial" / "trajectory.json").read_text())
    assert [p["step"] for p in partial] == [0, 1, 2, 3]
    finetune(make_tiny("llama")[0], cfg, tmp_path / "run", track_edits=edit_dir, tokenizer=tok, progress=False)
    got = json.loads((tmp_path / "run" / "trajectory.json").read_text())
    want = json.loads((tmp_path / "ref" / "trajectory.json").read_text())
    assert [p["step"] for p in got] == [0, 1, 2, 3, 4, 5]
    assert got == want


def test_fine_tunes_of_one_model_share_their_step_0_point_exactly(make_tiny, tmp_path, short_data, monkeypatch):
    """Step 0 scores the model training starts from. LoRA (B = 0) and full fine-tuning start from it bit for
    bit, so fine-tunes of the same model with other seeds or types read the first one's point instead of
    scoring it again, and it equals the point computed without sharing; DoRA, which is not the input model at
    step 0 bit for bit, scores its own."""
    import editdecay.evaluate.api as evaluate_api

    model, tok = make_tiny("llama")
    edit_dir = tmp_path / "edit"
    tiny_edit_folder(model, tok, edit_dir, [1])
    cfg = {**BASE, "data": short_data, "type": "lora", "layers": "edited", "max_steps": 2, "eval_every": 1}
    alone = finetune(make_tiny("llama")[0], cfg, tmp_path / "alone", track_edits=edit_dir, tokenizer=tok,
                     progress=False)
    assert alone["tracked_records"] == 2
    calls = []
    real = evaluate_api.evaluate_edits
    monkeypatch.setattr(evaluate_api, "evaluate_edits", lambda *a, **k: calls.append(1) or real(*a, **k))
    shared = tmp_path / "tracking"
    points = {}
    for name, override in (("lora0", {}), ("lora1", {"seed": 1}), ("full", {"type": "full"}),
                           ("dora", {"type": "dora"})):
        calls.clear()
        finetune(make_tiny("llama")[0], {**cfg, **override}, tmp_path / name, track_edits=edit_dir, tokenizer=tok,
                 progress=False, start_cache=shared)
        points[name] = json.loads((tmp_path / name / "trajectory.json").read_text())
        points[name + " calls"] = len(calls)
    want = json.loads((tmp_path / "alone" / "trajectory.json").read_text())[0]
    assert points["lora0"][0] == points["lora1"][0] == points["full"][0] == want  # exact, not approximate
    assert [points[f"{n} calls"] for n in ("lora0", "lora1", "full", "dora")] == [3, 2, 2, 3]  # steps 0, 1, 2
    assert len(list(shared.glob("start-*.json"))) == 1


def test_run_where_every_response_is_cut_off_is_an_error(make_tiny, tmp_path):
    """With the loss on the response only, max_length inside every prompt means no token carries a loss: an
    error, not a silent no-op. (With the study's loss on the whole example the prompt tokens still train.)"""
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"prompt": "word " * 80, "response": "answer"}) + "\n")
    model, tok = make_tiny("llama")
    cfg = {**BASE, "data": str(path), "type": "lora", "max_length": 16, "max_steps": 2, "train_on_inputs": False}
    with pytest.raises(ConfigError, match="trained on nothing"):
        finetune(model, cfg, tmp_path / "out", tokenizer=tok, progress=False)
    assert not (tmp_path / "out").exists()
    manifest = finetune(model, {**cfg, "train_on_inputs": True}, tmp_path / "whole", tokenizer=tok, progress=False)
    assert manifest["loss_tokens"] == 2 * 15  # 2 steps x the one example x (16 tokens - the first)
