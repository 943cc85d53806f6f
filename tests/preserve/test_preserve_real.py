"""Preserve strategies on the real SmolLM2-135M, kept short: the null-space constraint holds after real LoRA and
full fine-tuning, and a re-edit restores edits that a contradicting fine-tune erased."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from editdecay.data.records import load_edit_records
from editdecay.finetune.api import finetune
from editdecay.models.arch import get_adapter
from editdecay.preserve import nullspace
from editdecay.preserve.spec import load_edit_spec

pytestmark = [pytest.mark.real, pytest.mark.usefixtures("one_thread")]  # one thread: conftest.py


def _weights(folder) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("model*.safetensors")):
        out.update(load_file(str(path)))
    return out


def test_nullspace_holds_after_real_lora_and_full_finetuning(smollm2_path, smollm2, tmp_path):
    """‖ΔW_ft K_edit‖ at float32 tolerance on both rewritten projections, while they did train."""
    base, tok = smollm2
    records = load_edit_records("counterfact", n=3)
    edit_dir = tmp_path / "edit"  # a manifest naming the edited layers (no weight change needed for the check)
    edit_dir.mkdir()
    (edit_dir / "manifest.json").write_text(json.dumps(
        {"stage": "edit", "method": "memit", "layers": [3, 4], "records": [r.to_dict() for r in records],
         "context_templates": [["{}"], ["The weather was fine today. {}", "Because of this, {}"]]}))
    spec = load_edit_spec(edit_dir, base)
    keys = nullspace.edit_keys(base, tok, spec)
    assert spec.rewritten_from == "layers" and set(keys) == {f"model.layers.{i}.mlp.down_proj.weight" for i in (3, 4)}
    before = _weights(smollm2_path)
    adapter = get_adapter(base)
    common = {"data": "commonsense:ARC-Easy", "layers": "edited", "modules": "mlp", "batch_size": 2,
              "max_length": 64, "warmup_steps": 0, "preserve_strategy": "nullspace"}
    for ft_type, extra in (("lora", {"max_steps": 3, "lr": 1e-3, "r": 8}), ("full", {"max_steps": 2, "lr": 1e-4})):
        out = tmp_path / ft_type
        manifest = finetune(smollm2_path, {**common, "type": ft_type, **extra}, out, preserve_edits=edit_dir,
                            progress=False)
        after = _weights(out)
        for name, k in keys.items():
            delta = adapter.as_out_in(after[name] - before[name])
            assert float(delta.norm()) > 0, f"{ft_type}: {name} did not train"
            assert nullspace.output_change(delta, k.float()) < 1e-4, (ft_type, name)
        assert max(manifest["preserve"]["output_change"].values()) < 1e-4


def test_reedit_restores_edits_a_contradicting_finetune_erased(smollm2_path, smollm2, tmp_path):
    """MEMIT writes 3 facts; LoRA on their *true* objects erases them; the re-edit (stored z, re-optimised
    only where needed) brings efficacy back, and its cost is recorded."""
    from editdecay.edit.api import edit_to_folder
    from editdecay.evaluate.api import evaluate_edits
    from editdecay.models.registry import load_model

    base, tok = smollm2
    records = load_edit_records("counterfact", n=3)
    edit_dir = tmp_path / "edit"
    edit_to_folder(smollm2_path, records, edit_dir, model=copy.deepcopy(base), tok=tok, progress=False)
    counter = tmp_path / "counter.jsonl"  # the facts as they were: fine-tuning on them undoes the edit
    counter.write_text("".join(json.dumps({"prompt": r.filled_prompt, "response": " " + r.target_true}) + "\n"
                               for r in records))
    cfg = {"type": "lora", "data": str(counter), "modules": "mlp", "r": 8, "lr": 3e-3, "max_steps": 8,
           "batch_size": 3, "max_length": 32, "warmup_steps": 0}
    manifest = finetune(str(edit_dir), {**cfg, "preserve_strategy": "reedit"}, tmp_path / "reedit",
                        preserve_edits=edit_dir, progress=False)
    info = manifest["preserve"]["reedit"]  # held = efficacy > 0.5, counted on the model at each point
    assert info["held_before_ft"] == 3 and info["held_after_ft"] <= 1, info  # the fine-tune erased the edits
    assert info["held_final"] == 3, info
    model, mtok = load_model(tmp_path / "reedit")  # the saved folder holds the restored edits
    assert evaluate_edits(model, mtok, records)["summary"]["efficacy"] == 1.0
    assert manifest["preserve"]["extra_seconds"] > 0 and info["seconds"]["solve"] > 0
