"""Activation-shift analysis on tiny models with hand-checkable answers.

An edit that adds delta to layer 1's MLP output projection changes layer 1's output at a prompt by exactly
delta @ m, where m is the projection's input (unchanged, since nothing before it changed). So:
- fine-tuned == edited      -> fine-tuning shift 0, angle undefined;
- fine-tuned = base + 3 delta -> at layer 1 the fine-tuning shift is exactly 2x the edit shift, angle 0;
- fine-tuned == base        -> the shift is undone: equal size, angle 180.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

RECORDS = [
    {"case_id": "a", "subject": "Danielle Darrieux", "prompt": "The mother tongue of {} is", "target_new": "English",
     "target_true": "French"},
    {"case_id": "b", "subject": "Toko Yasuda", "prompt": "{} plays the", "target_new": "piano", "target_true": "guitar"},
    {"case_id": "c", "subject": "Autonomous University of Madrid", "prompt": "{}, which is located in",
     "target_new": "Sweden", "target_true": "Spain"},
]


def _save(model, tok, folder, manifest=None):
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    if manifest is not None:
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_tok):
    from editdecay.models.tiny import tiny_model

    root = tmp_path_factory.mktemp("shift")
    model, tok = tiny_model("llama", tokenizer=tiny_tok, n_layers=4, d_model=64, seed=1)
    base = _save(model, tok, root / "base")
    w = model.model.layers[1].mlp.down_proj.weight
    delta = 0.5 * torch.randn(w.shape, generator=torch.Generator().manual_seed(3))
    manifest = {"stage": "edit", "method": "memit", "layers": [1], "records": [
        dict(r, paraphrase_prompts=[], neighborhood_prompts=[], neighborhood_answers=[], attribute_prompts=[],
             generation_prompts=[], dataset="counterfact") for r in RECORDS]}
    with torch.no_grad():
        w.add_(delta)
    edited = _save(model, tok, root / "edited", manifest)
    with torch.no_grad():
        w.add_(2 * delta)
    ft_known = _save(model, tok, root / "ft_known")
    return {"base": base, "edited": edited, "ft_known": ft_known, "delta": delta}


def test_finetuned_equal_to_edited_gives_zero_shift(folders):
    from editdecay.analyze.shift import activation_shift

    out = activation_shift(folders["base"], folders["edited"], folders["edited"], layers=[1, 2])
    for row in out["per_layer"]:
        assert row["ft_shift"] == 0.0
        assert row["edit_shift"] > 0
        assert row["angle_deg"] is None and row["n_angle_defined"] == 0
    assert out["n_records"] == 3 and len(out["records"]) == 6


def test_known_delta_doubles_the_shift_in_the_same_direction(folders):
    from editdecay.analyze.shift import activation_shift

    out = activation_shift(folders["base"], folders["edited"], folders["ft_known"])  # layers from the manifest
    assert out["layers"] == [1]
    row = out["per_layer"][0]
    assert row["ratio"] == pytest.approx(2.0, rel=1e-4)
    assert row["angle_deg"] == pytest.approx(0.0, abs=0.5)
    assert row["cos"] == pytest.approx(1.0, abs=1e-5)
    undone = activation_shift(folders["base"], folders["edited"], folders["base"], layers=[1])["per_layer"][0]
    assert undone["ratio"] == pytest.approx(1.0, rel=1e-5)
    assert undone["angle_deg"] == pytest.approx(180.0, abs=0.5)


def test_edit_shift_equals_delta_times_the_projection_input(folders):
    """‖h_ed − h_base‖ at layer 1 equals ‖delta @ m‖ with m the down_proj input at the subject's last token."""
    from helpers.reference import subject_last_token

    from editdecay.analyze.shift import activation_shift
    from editdecay.models.registry import load_model

    model, tok = load_model(folders["base"])
    captured = {}
    handle = model.model.layers[1].mlp.down_proj.register_forward_hook(
        lambda _m, inputs, _o: captured.__setitem__("m", inputs[0]))
    expected = []
    try:
        for rec in RECORDS:
            ids, pos = subject_last_token(tok, rec["prompt"], rec["subject"])
            with torch.no_grad():
                model(input_ids=torch.tensor([ids]))
            expected.append(float((captured["m"][0, pos] @ folders["delta"].T).norm()))
    finally:
        handle.remove()
    out = activation_shift(folders["base"], folders["edited"], folders["edited"], layers=[1])
    got = [r["edit_shift"] for r in out["records"]]
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_subject_last_token_with_and_without_bos(tiny_tok, tiny_tok_bos):
    from helpers.reference import subject_last_token

    for tok in (tiny_tok, tiny_tok_bos):
        ids, pos = subject_last_token(tok, "The mother tongue of {} is", "Danielle Darrieux")
        assert tok.decode(ids[: pos + 1], skip_special_tokens=True) == "The mother tongue of Danielle Darrieux"
        assert tok.decode(ids[pos + 1:], skip_special_tokens=True) == " is"
    ids, pos = subject_last_token(tiny_tok, "{} plays the", "Toko Yasuda")
    assert tiny_tok.decode(ids[: pos + 1]) == "Toko Yasuda"


def test_shift_stats_closed_form():
    from editdecay.analyze.shift import shift_stats

    h_base = np.array([[1.0, 0.0], [0.0, 0.0]])
    h_ed = np.array([[1.0, 2.0], [3.0, 4.0]])
    h_ft = np.array([[1.0, 2.0], [3.0, 8.0]])  # row 0: no fine-tuning change; row 1: b = (0, 4)
    s = shift_stats(h_base, h_ed, h_ft)
    np.testing.assert_allclose(s["edit_shift"], [2.0, 5.0])
    np.testing.assert_allclose(s["ft_shift"], [0.0, 4.0])
    assert np.isnan(s["angle_deg"][0])
    assert s["cos"][1] == pytest.approx(4.0 / 5.0)  # a = (3, 4), b = (0, 4): cos = 16 / 20
    assert s["angle_deg"][1] == pytest.approx(np.degrees(np.arccos(0.8)))


def test_cli_analyze_shift(folders, tmp_path, capsys):
    from editdecay.cli import main

    out = tmp_path / "shift.json"
    args = ["analyze", "shift", "--base", str(folders["base"]), "--edited", str(folders["edited"]),
            "--finetuned", str(folders["ft_known"]), "--layers", "1-2", "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "editdecay.cli", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert [r["layer"] for r in result["per_layer"]] == [1, 2]
    assert "angle" in done.stdout
    # error paths in-process (same entry point, no second interpreter start-up)
    assert main(args[:4] + ["--edited", str(folders["base"]), "--finetuned", str(folders["ft_known"])]) == 1
    assert "manifest.json" in capsys.readouterr().err
    assert main(args[:-4] + ["--layers", "1,x"]) == 1
    assert "'x'" in capsys.readouterr().err


@pytest.mark.real
def test_real_smollm2_partial_reversal(smollm2):
    """SmolLM2 with a rank-one edit at layer 4, then 'fine-tuned' by removing 40% of it: at layer 4 the
    fine-tuning shift is 0.4x the edit shift at 180 degrees; the subject's last token is found with the real
    tokenizer."""
    import copy

    from helpers.reference import subject_last_token

    from editdecay.analyze.shift import shift_between
    from editdecay.data.records import EditRecord

    base, tok = smollm2
    records = [EditRecord(case_id=r["case_id"], subject=r["subject"], prompt=r["prompt"], target_new=r["target_new"],
                          target_true=r["target_true"]) for r in RECORDS]
    for rec in records:
        ids, pos = subject_last_token(tok, rec.prompt, rec.subject)
        assert tok.decode(ids[: pos + 1]).endswith(rec.subject)
    gen = torch.Generator().manual_seed(0)
    w = base.model.layers[4].mlp.down_proj.weight
    delta = torch.outer(torch.randn(w.shape[0], generator=gen), torch.randn(w.shape[1], generator=gen)) * 1e-3
    edited, finetuned = copy.deepcopy(base), copy.deepcopy(base)
    with torch.no_grad():
        edited.model.layers[4].mlp.down_proj.weight.add_(delta)
        finetuned.model.layers[4].mlp.down_proj.weight.add_(0.6 * delta)
    out = shift_between(base, edited, finetuned, tok, records, layers=[4, 10])
    l4, l10 = out["per_layer"]
    assert l4["edit_shift"] > 0
    assert l4["ratio"] == pytest.approx(0.4, rel=1e-3)
    assert l4["angle_deg"] == pytest.approx(180.0, abs=0.5)
    assert l10["edit_shift"] > 0 and l10["ft_shift"] > 0  # the change propagates to later layers
