"""Erase on tiny random models: locating with the base finds exactly the edited layers (MEMIT and AlphaEdit), the
exact restore is bit-identical, top-component removal and key projection do what they say, weights-only location
is scored against the layers an edit the test makes actually changed, and the CLI writes the contract's fields."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers.edits import FAST, sharpen

from editdecay.cli import main
from editdecay.data.records import EditRecord
from editdecay.edit.api import edit, edit_to_folder
from editdecay.edit.stats import StatsCache
from editdecay.erase import locate, reverse
from editdecay.erase.api import erase, inspect_edits
from editdecay.models.arch import get_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = [("Paris", "{} is located in", "Germany", "France"),
         ("The Eiffel Tower", "In {}, the official language is", "Rome", "French"),
         ("Danielle Darrieux", "The mother tongue of {} is", "English", "French")]
RECORDS = [EditRecord(case_id=str(i), subject=s, prompt=p, target_new=t, target_true=tt, dataset="counterfact")
           for i, (s, p, t, tt) in enumerate(FACTS)]


@pytest.fixture
def folders(make_tiny, tmp_path):
    """A tiny base folder and a MEMIT edit folder of it (layers 1-2, three records)."""
    model, tok = make_tiny("llama", n_layers=4)
    sharpen(model)
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    edit_to_folder(base_dir, RECORDS, tmp_path / "edited", hparams=FAST, stats_cache=StatsCache(tmp_path / "s"),
                   progress=False, model=copy.deepcopy(model), tok=tok)
    return base_dir, tmp_path / "edited", model, tok


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
@pytest.mark.parametrize("layers", [[1, 2], [2, 3]])
def test_locate_with_base_finds_exactly_the_edited_layers(make_tiny, tmp_path, method, layers):
    base, tok = make_tiny("llama", n_layers=4)
    sharpen(base)
    model = copy.deepcopy(base)
    extra = dict(nullspace_threshold=1e-3, L2=1e-3) if method == "alphaedit" else {}
    result = edit(model, tok, RECORDS, method=method, hparams=dict(FAST, layers=layers, **extra),
                  stats_cache=StatsCache(tmp_path), progress=False)
    report = inspect_edits((model, tok), (base, tok))
    assert report["mode"] == "diff" and report["located_layers"] == layers == result.layers
    adapter = get_adapter(model)
    assert {c["name"] for c in report["changes"]} == {adapter.rewrite_name(i) + ".weight" for i in layers}
    for c in report["changes"]:
        assert c["is_rewrite"] and c["projection"] == "mlp.down_proj.weight"
        assert 1 <= c["rank"] <= len(RECORDS)  # a locate-then-edit update has rank <= the number of edits
        delta = result.deltas[c["name"]].double()
        assert c["norm"] == pytest.approx(float(delta.norm()), rel=1e-3)
    scores = {row["layer"]: row["score"] for row in report["layers"]}
    assert all((scores[i] > 0) == (i in layers) for i in scores)
    assert report["traced"] and all(d["layer"] in layers for d in report["traced"])


def test_exact_restore_is_bit_identical_and_reloads(folders, tmp_path):
    from transformers import AutoModelForCausalLM

    base_dir, edited, base, _ = folders
    out = tmp_path / "restored"
    manifest = erase(edited, out, base=base_dir)
    assert manifest["located_layers"] == [1, 2] and manifest["bit_identical"] is True
    assert sorted(manifest["restored"]) == ["model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"]
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    theirs = dict(base.named_parameters())
    for name, p in reloaded.named_parameters():
        assert torch.equal(p, theirs[name]), name
    assert json.loads((out / "manifest.json").read_text())["located_layers"] == [1, 2]


def test_numerical_rank_sees_through_float32_rounding():
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    delta = (torch.randn(64, 3) @ torch.randn(3, 128)) * 1e-2
    edited = w + delta  # float32 rounding: the difference is the rank-3 delta plus full-rank noise
    rank, sigma = locate.numerical_rank(edited.double() - w.double(), w)
    assert rank == 3 and sigma[0] > sigma[2] > 0


def test_remove_top_components_and_project_out_keys(make_tiny):
    model, tok = make_tiny("llama", n_layers=4)
    adapter = get_adapter(model)
    w = locate.rewrite_matrix(model, adapter, 2).clone()
    removed = reverse.remove_top_components(model, adapter, {2: 3})
    after = locate.rewrite_matrix(model, adapter, 2)
    s = torch.linalg.svdvals(w)
    assert removed[2] == pytest.approx([float(x) for x in s[:3]], rel=1e-5)
    torch.testing.assert_close(torch.linalg.svdvals(after)[:-3], s[3:], rtol=1e-4, atol=1e-5)
    # key projection: the matrix no longer answers the records' keys, and nothing orthogonal to them changes
    from editdecay.edit.keys import compute_keys
    from editdecay.edit.prompts import Request, context_templates

    reverse.project_out_keys(model, tok, adapter, RECORDS, [1])
    keys = compute_keys(model, tok, adapter, 1, [Request.from_record(r) for r in RECORDS],
                        context_templates(model, tok)).double()
    out = locate.rewrite_matrix(model, adapter, 1) @ keys.T
    assert float(out.norm()) < 1e-4 * float(keys.norm())


def test_weights_only_location_is_scored_against_the_edit_the_test_makes(make_tiny, tmp_path):
    """A large 3-edit MEMIT on a tiny model: the located layers are compared with the layers it changed."""
    base, tok = make_tiny("llama", n_layers=10)
    sharpen(base)
    model = copy.deepcopy(base)
    result = edit(model, tok, RECORDS, hparams=dict(FAST, layers=[4, 5], mom2_update_weight=1e-3,
                                                    clamp_norm_factor=50.0, v_num_grad_steps=20, v_lr=2.0),
                  stats_cache=StatsCache(tmp_path), progress=False)
    truth = sorted(inspect_edits((model, tok), (base, tok))["located_layers"])
    assert truth == result.layers
    scores = locate.weights_only_scores(model, get_adapter(model))
    located = scores["located_layers"]
    hits = set(located) & set(truth)
    # the statistic must rank the edited layers above the untouched ones on this strongly edited model
    ranked = sorted(range(10), key=lambda i: -scores["layers"][i]["score"])
    assert set(ranked[:2]) == set(truth), (ranked, [round(r["score"], 2) for r in scores["layers"]])
    assert hits == set(truth)


def test_cli_contract_inspect_and_erase(folders, tmp_path, capsys):
    base_dir, edited, _, _ = folders
    report = tmp_path / "inspect.json"
    assert main(["inspect-edits", "--model", str(edited), "--base", str(base_dir), "--out", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["located_layers"] == [1, 2] and all(isinstance(i, int) for i in data["located_layers"])
    assert [row["layer"] for row in data["layers"]] == [0, 1, 2, 3] and all("score" in r for r in data["layers"])

    out = tmp_path / "erased"
    assert main(["erase", "--model", str(edited), "--records", str(edited / "manifest.json"), "--layers", "1-2",
                 "--strategy", "project", "--out", str(out), "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["located_layers"] == [1, 2] and manifest["strategy"] == "project"
    assert manifest["erased"] + manifest["still_holding"] == manifest["n_records"] == len(RECORDS)

    weights = tmp_path / "weights"
    assert main(["erase", "--model", str(edited), "--layers", "1-2", "--out", str(weights), "--no-progress"]) == 0
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["strategy"] == "svd" and manifest["located_layers"] == [1, 2]
    assert manifest["erased"] + manifest["still_holding"] == len(manifest["traced"]) >= 2


def test_reedit_towards_true_targets_moves_every_record_back(folders, tmp_path):
    from editdecay.evaluate.scoring import score_continuations
    from editdecay.models.registry import load_model

    _, edited, _, tok = folders
    out = tmp_path / "reedit"
    manifest = erase(edited, out, records=edited / "manifest.json", layers=[1, 2], strategy="reedit")
    assert manifest["strategy"] == "reedit" and manifest["reedit"]["layers"] == [1, 2]
    assert manifest["erased"] + manifest["still_holding"] == manifest["n_records"] == 3
    pairs = [(r.filled_prompt, " " + r.target_true) for r in RECORDS]
    nll = {}
    for name, folder in (("edited", edited), ("reedited", out)):
        model, _ = load_model(folder)
        nll[name] = [x.mean_nll for x in score_continuations(model, tok, pairs)]
    assert all(b < a for a, b in zip(nll["edited"], nll["reedited"], strict=True)), nll


def test_finetune_strategy_trains_only_the_located_mlps(folders, tmp_path):
    from transformers import AutoModelForCausalLM

    _, edited, _, _ = folders
    out = tmp_path / "ft"
    manifest = erase(edited, out, records=edited / "manifest.json", layers=[2], strategy="finetune", budget_steps=2)
    assert manifest["finetune"]["steps"] == 2 and manifest["finetune"]["layers"] == [2]
    before = dict(AutoModelForCausalLM.from_pretrained(edited).named_parameters())
    for name, p in AutoModelForCausalLM.from_pretrained(out).named_parameters():
        if not torch.equal(p, before[name]):
            assert name.startswith("model.layers.2.mlp."), name


def test_errors_name_the_file_or_flag(folders, tmp_path, capsys):
    _, edited, _, _ = folders
    assert main(["erase", "--model", str(edited), "--records", str(tmp_path / "nope.jsonl"), "--layers", "1",
                 "--out", str(tmp_path / "x")]) == 1
    assert "nope.jsonl" in capsys.readouterr().err
    assert main(["erase", "--model", str(edited), "--strategy", "project", "--layers", "1",
                 "--out", str(tmp_path / "y")]) == 1
    assert "--records" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"subject": "Paris", "prompt": "{} is in", "target_new": "Rome"}) + "\n")
    assert main(["erase", "--model", str(edited), "--records", str(bad), "--layers", "1", "--strategy", "reedit",
                 "--out", str(tmp_path / "z")]) == 1
    assert "target_true" in capsys.readouterr().err
