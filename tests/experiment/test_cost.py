"""Memory and disk estimates before work (issue 12 part 5): closed forms on a small shape, checks, plan output."""

from __future__ import annotations

import pytest
import yaml
from helpers import ROOT

from editdecay.errors import ConfigError
from editdecay.experiment import cost
from editdecay.experiment.cost import (
    ModelShape,
    check_plan_resources,
    ensure_plan_fits,
    estimate_plan,
    estimate_stage,
    model_shape,
)
from editdecay.experiment.grid import StageSpec, expand, parse_grid

# a llama-like shape small enough to write every term by hand
S = ModelShape("toy", "llama", num_layers=4, hidden=8, intermediate=16, vocab=100, heads=2, kv_dim=4, params=5000.0,
               source="test")
LAYER = 8 * 8 + 8 * 4 + 8 * 4 + 8 * 8 + 8 * 16 * 3 + 4 * 8  # q, k, v, o, gate/up/down, norms


def spec(kind, config, resources=None):
    return StageSpec(f"{kind}-x", kind, config, {}, resources or {"memory_gb": 0})


def ft(kind="full", **extra):
    return {"finetune": {"type": kind, "layers": "all", "modules": "attn,mlp", "data": "commonsense", "seed": 0,
                         "batch_size": 2, "max_length": 10, **extra}, "track_edits": False}


def test_full_finetune_is_weights_gradients_adam_and_activations():
    c = estimate_stage(spec("finetune", ft()), S)
    assert S.layer_params() == LAYER
    trained = 4 * LAYER
    assert c.parts["weights (float32)"] == 5000 * 4
    assert c.parts["gradients"] == trained * 4
    assert c.parts["AdamW states (2 x float32)"] == trained * 8
    assert c.parts["activations"] == 2 * 10 * 4 * (12 * 8 + 4 * 16) * 4 + 2 * 2 * 10 * 10 * 4 * 4
    assert c.parts["logits"] == 3 * 20 * 100 * 4
    assert c.memory == sum(v for k, v in c.parts.items() if not k.startswith("disk"))
    assert c.disk == 1e6  # logs only: a full fine-tune keeps no weights without keep:
    kept = estimate_stage(spec("finetune", {**ft(), "keep_model": True}), S)
    assert kept.disk == 1e6 + 5000 * 4


def test_bf16_halves_weights_and_gradients_not_adam():
    c = estimate_stage(spec("finetune", {**ft(), "dtype": "bfloat16"}), S)
    assert c.parts["weights (bfloat16)"] == 5000 * 2
    assert c.parts["gradients"] == 4 * LAYER * 2
    assert c.parts["AdamW states (2 x float32)"] == 4 * LAYER * 8


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_adapters_count_r_in_plus_out_per_projection(kind):
    c = estimate_stage(spec("finetune", ft(kind, r=2, layers=[1, 2], modules="mlp")), S)
    per_layer = 2 * ((8 + 16) * 2 + (16 + 8)) + ((16 + 16 + 8) if kind == "dora" else 0)  # gate, up, down
    assert c.parts["adapter + gradients + AdamW (float32)"] == 2 * per_layer * 16
    assert c.parts["disk: adapter"] == 2 * per_layer * 4
    assert "gradients" not in c.parts


def test_edit_and_stats_hold_the_dk_squared_matrices():
    hp = {"layers": [1, 2], "context_template_length_params": [[10, 5]]}
    memit = estimate_stage(spec("edit", {"method": "memit", "n_edits": 10, "hparams": hp}), S)
    assert memit.parts["statistics (float64)"] == 2 * 16 * 16 * 8
    assert memit.parts["solve (float64)"] == 3 * 16 * 16 * 8
    assert memit.parts["disk: deltas"] == 2 * 8 * 16 * 4
    assert memit.disk == 2 * 8 * 16 * 4 + 10 * 2048  # deltas + manifest, no model copy
    one = estimate_stage(spec("edit", {"method": "memit", "n_edits": 1, "hparams": hp}), S)
    assert one.parts["disk: deltas"] == 2 * 1 * (8 + 16) * 8  # rank 1: the float64 factors, smaller than dense
    alpha = estimate_stage(spec("edit", {"method": "alphaedit", "n_edits": 10, "hparams": hp, "keep_model": True}), S)
    assert alpha.parts["AlphaEdit projection"] == 6 * 16 * 16 * 8
    assert alpha.disk == memit.disk + 2 * (16 * 16 + 16 * 17 // 2) * 8 + 5000 * 4  # basis bound + K_pK_pᵀ triangle
    stats = estimate_stage(spec("stats", {"layers": [1, 2], "mom2_dtype": "float64", "mom2_seq_len": 8}), S)
    assert stats.parts["second moments"] == 2 * 16 * 16 * 8 + 16 * 16 * 4
    assert stats.disk == 2 * (16 * 17 // 2) * 8  # the upper triangle of each 16x16 float64 C


def test_unknown_kind_counts_zero_with_a_note():
    c = estimate_stage(spec("preserve", {}), S)
    assert (c.memory, c.disk) == (0, 0) and "no estimate for stage kind 'preserve'" in c.notes[0]


def _tiny_plan(tmp_path, **resources):
    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    raw["resources"] = {k: {"num_cpus": 1, **v} for k, v in resources.items()}
    return expand(parse_grid(raw, str(tmp_path / "tiny.yaml")))


def test_model_shape_from_the_config(tmp_path):
    shape = model_shape(_tiny_plan(tmp_path), "tiny:llama")
    assert (shape.hidden, shape.intermediate, shape.kv_dim, shape.num_layers, shape.source) == (64, 128, 32, 4,
                                                                                              "config.json")


def test_a_fitting_plan_has_no_problems(tmp_path):
    assert check_plan_resources(_tiny_plan(tmp_path), workdir=tmp_path) == []


def test_declared_memory_too_small_names_the_stage_and_the_shortfall(tmp_path):
    plan = _tiny_plan(tmp_path, finetune={"memory_gb": 0.001})
    problems = check_plan_resources(plan, check_machine=False)
    assert len(problems) == 1
    worst = max((c for c in estimate_plan(plan) if c.kind == "finetune"), key=lambda c: c.memory)
    assert problems[0].startswith(f"stage {worst.stage_id} (finetune, tiny:llama): estimated peak memory")
    assert "exceeds resources.finetune.memory_gb = 0.001 (short by" in problems[0]
    with pytest.raises(ConfigError, match=r"(?s)does not fit.*resources.finetune.memory_gb"):
        ensure_plan_fits(plan, check_machine=False)


def test_machine_ram_and_disk_are_checked(tmp_path, monkeypatch):
    plan = _tiny_plan(tmp_path)
    monkeypatch.setattr(cost, "machine_memory", lambda: 1e6)
    problems = check_plan_resources(plan)
    assert problems and all("this machine's RAM" in p for p in problems)
    assert not check_plan_resources(plan, check_machine=False)

    class Usage:
        free = 1000.0

    monkeypatch.setattr(cost.shutil, "disk_usage", lambda path: Usage)
    disk = check_plan_resources(plan, workdir=tmp_path / "not-yet" / "work", check_machine=False)
    assert len(disk) == 1 and "free (short by" in disk[0] and str(tmp_path) in disk[0]


def test_machine_memory_reads_this_machine():
    assert cost.machine_memory() > 2 ** 28


def test_plan_command_prints_memory_and_disk(capsys):
    from editdecay.cli import main

    assert main(["plan", str(ROOT / "configs" / "tiny.yaml")]) == 0
    out = capsys.readouterr().out
    assert "peak memory" in out and "estimated disk" in out
    assert any(line.startswith("targets") for line in out.splitlines())


def test_paper_grid_plans_with_estimates(capsys, tmp_path):
    import yaml

    from editdecay.cli import main

    rc = main(["plan", str(ROOT / "configs" / "paper.yaml"), "--runs", "1", "--no-machine-check"])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in
            ("stats", "targets", "edit", "finetune", "evaluate")}
    assert set(rows) == {"stats", "targets", "edit", "finetune", "evaluate"}
    assert all(" GB" in row for row in rows.values())  # 7-8B models: gigabytes everywhere
    assert rc == 0  # the declared resources hold every stage
    # 64 GB cannot hold a float32 full fine-tune of an 8B model (weights + grads + AdamW alone)
    raw = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    raw["resources"]["finetune"]["memory_gb"] = 64
    short = tmp_path / "paper-64.yaml"
    short.write_text(yaml.safe_dump(raw))
    rc = main(["plan", str(short), "--runs", "1", "--no-machine-check"])
    out = capsys.readouterr().out
    assert rc == 1 and "finetune" in out.split("problem(s)")[1]
