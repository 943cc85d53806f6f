"""Fine-tuning the real SmolLM2-135M: a short LoRA run learns, and the decay tracker records its trajectory."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.reference import token_loss_sum

from editdecay.cli import main as cli_main
from editdecay.data.records import load_edit_records
from editdecay.finetune.data import TrainData, load_examples

pytestmark = [pytest.mark.real, pytest.mark.usefixtures("one_thread")]  # one thread: conftest.py




def _mean_loss(model, data: TrainData) -> float:
    """Token-weighted response loss of every example in ``data`` (eval mode, no dropout)."""
    batch = data.collate(list(range(len(data))))
    n = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(token_loss_sum(logits, batch["labels"])) / n


def test_short_lora_run_lowers_training_loss(smollm2_path, smollm2, tmp_path):
    from editdecay.finetune.api import finetune
    from editdecay.models.registry import load_model

    base, tok = smollm2
    cfg = {"type": "lora", "data": "commonsense:ARC-Easy", "max_examples": 4, "batch_size": 2, "max_length": 128,
           "max_steps": 6, "warmup_steps": 1, "seed": 0}
    data = TrainData(load_examples(cfg["data"], 4), tok, 128, 4, seed=0)
    assert all(data.encoded(i).n_loss_tokens > 3 for i in range(4))  # responses survive the 128-token cut
    before = _mean_loss(base, data)
    manifest = finetune(smollm2_path, cfg, tmp_path / "ft", progress=False)
    tuned, _ = load_model(tmp_path / "ft")
    after = _mean_loss(tuned, data)
    assert manifest["steps"] == 6 and manifest["n_trained"] > 0
    assert sorted(int(k) for k in manifest["trained_parameters"]) == list(range(30))
    assert after < before - 0.1, (before, after)


def test_tracked_run_records_trajectory(smollm2_path, tmp_path):
    """CLI contract with tracking: 5 steps, eval every 2 -> points at 0, 2, 4, 5; the last equals a fresh
    evaluation of the merged output folder."""
    from editdecay.evaluate.api import evaluate_model

    edit_dir = tmp_path / "edit"
    edit_dir.mkdir()
    records = load_edit_records("counterfact", n=3)
    (edit_dir / "manifest.json").write_text(json.dumps(
        {"stage": "edit", "method": "none", "layers": [3, 4, 5], "records": [r.to_dict() for r in records]}))
    out = tmp_path / "ft"
    argv = ["finetune", "--model", str(smollm2_path), "--type", "dora", "--layers", "edited", "--data", "commonsense",
            "--max-steps", "5", "--track-edits", str(edit_dir), "--eval-every", "2", "--batch-size", "2",
            "--max-length", "96", "--lr", "1e-3", "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layers"] == [3, 4, 5] and set(manifest["trained_parameters"]) == {"3", "4", "5"}
    trajectory = json.loads((out / "trajectory.json").read_text())
    assert [p["step"] for p in trajectory] == [0, 2, 4, 5]
    final = evaluate_model(str(out), records=str(edit_dir / "manifest.json"), progress=False)["summary"]
    for metric in ("efficacy", "paraphrase", "neighborhood"):
        assert all(0.0 <= p[metric] <= 1.0 for p in trajectory)
        assert trajectory[-1][metric] == pytest.approx(final[metric], abs=1e-6)
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5] and all(r["tokens_per_s"] > 0 for r in log)
