"""Preserve strategies on tiny models with a real MEMIT edit: each changes only what it says.

freeze: the rewritten projections are bit-identical after LoRA, DoRA and full fine-tuning; nullspace: the
fine-tuning update of every rewritten projection maps the edit keys to zero (ΔW_ft K_edit ≈ 0 at float32
tolerance), for LoRA, DoRA and full, Llama and GPT-2 (transposed Conv1D); replay: the asked share of examples
are edit facts; reedit: the edited layer's output at the subject tokens is brought back to its target.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from editdecay.cli import main as cli_main
from editdecay.data.records import EditRecord
from editdecay.errors import ConfigError
from editdecay.finetune.api import finetune
from editdecay.models.arch import get_adapter
from editdecay.preserve import nullspace, replay
from editdecay.preserve.spec import load_edit_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread: see conftest.py

FACTS = [("Paris", "{} is located in", "Germany"), ("The Eiffel Tower", "In {}, the official language is", "Rome"),
         ("Danielle Darrieux", "The mother tongue of {} is", "English"), ("Toko Yasuda", "{} plays the", "piano")]
RECORDS = [EditRecord(case_id=str(i), subject=s, prompt=p, target_new=t, target_true="French",
                      paraphrase_prompts=[f"Some say that {p.format(s)}"], neighborhood_prompts=["Lyon is in"],
                      neighborhood_answers=["France"], dataset="counterfact")
           for i, (s, p, t) in enumerate(FACTS)]
# a tiny λ makes the solve reach its target (a random model's C says little), so the re-edit can be checked exactly
FAST = dict(layers=[1, 2], mom2_n_tokens=800, mom2_seq_len=64, v_num_grad_steps=5, v_weight_decay=0.05,
            context_template_length_params=[[6, 2]], mom2_update_weight=1e-4, max_condition=1e16)
BASE = {"batch_size": 2, "max_length": 64, "warmup_steps": 0, "max_steps": 3, "lr": 1e-3, "r": 4}


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    facts = ["water boils at 100 degrees", "the sun rises in the east", "cats have four legs", "ice is cold",
             "Paris is in France", "two plus two is four", "the sky is blue", "bees make honey",
             "fish live in water", "snow is white", "birds can fly", "grass is green"]
    path.write_text("".join(json.dumps({"prompt": f"Fact {i}: ", "response": f}) + "\n" for i, f in enumerate(facts)))
    return str(path)


@pytest.fixture(scope="module")
def edits(tmp_path_factory, tiny_tok):
    """{arch: edit folder}: a real MEMIT edit of layers 1-2 of a tiny model saved as the base folder."""
    from editdecay.edit.api import edit_to_folder
    from editdecay.models.tiny import tiny_model

    out = {}
    for arch in ("llama", "gpt2"):
        root = tmp_path_factory.mktemp(arch)
        model, tok = tiny_model(arch, tokenizer=tiny_tok)
        model.save_pretrained(root / "base")
        tok.save_pretrained(root / "base")
        edit_to_folder(str(root / "base"), RECORDS, root / "edit", hparams=FAST, stats_cache=False,
                       targets_cache=False, progress=False, model=model, tok=tok)
        out[arch] = root / "edit"
    return out


# AlphaEdit on the tiny model: a random model's C has every eigenvalue below the default 2e-2 (P = I, no null-space
# constraint to check), so the threshold sits near the median eigenvalue (~1e-4) and a tiny α lets the solve reach z
ALPHA = {**FAST, "nullspace_threshold": 1e-4, "L2": 1e-4}


@pytest.fixture(scope="module")
def alphaedit_edit(tmp_path_factory, tiny_tok):
    """A real AlphaEdit edit of layers 1-2 of the tiny Llama (the base folder beside it)."""
    from editdecay.edit.api import edit_to_folder
    from editdecay.models.tiny import tiny_model

    root = tmp_path_factory.mktemp("alphaedit")
    model, tok = tiny_model("llama", tokenizer=tiny_tok)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    edit_to_folder(str(root / "base"), RECORDS, root / "edit", method="alphaedit", hparams=ALPHA, stats_cache=False,
                   targets_cache=False, progress=False, model=model, tok=tok)
    return root / "edit"


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _rewritten(edit_dir) -> list[str]:
    return list(json.loads((edit_dir / "manifest.json").read_text())["deltas"])


@pytest.mark.parametrize("ft_type", ["lora", "dora", "full"])
def test_freeze_leaves_rewritten_projections_bit_identical(edits, tmp_path, train_file, ft_type):
    edit_dir = edits["llama"]
    cfg = {**BASE, "data": train_file, "type": ft_type, "preserve_strategy": "freeze"}
    manifest = finetune(str(edit_dir), cfg, tmp_path / "ft", preserve_edits=edit_dir, progress=False)
    before, after = _weights(edit_dir), _weights(tmp_path / "ft")
    rewritten = _rewritten(edit_dir)
    assert rewritten and all(torch.equal(before[n], after[n]) for n in rewritten)
    changed = {n for n in after if not torch.equal(before[n], after[n])}
    assert changed, "nothing trained"
    assert not any(n.rsplit(".", 1)[0] in manifest["target_modules"] for n in rewritten)
    assert manifest["preserve"]["strategy"] == "freeze" and manifest["preserve"]["rewritten"] == rewritten


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("ft_type", ["lora", "dora", "full"])
def test_nullspace_update_maps_edit_keys_to_zero(edits, tmp_path, train_file, ft_type, arch):
    """ΔW_ft K_edit ≈ 0 on every rewritten projection (keys recomputed here on the edited model) while the
    same run without the constraint moves those outputs."""
    from editdecay.models.registry import load_model

    edit_dir = edits[arch]
    edited, tok = load_model(edit_dir)
    keys = nullspace.edit_keys(edited, tok, load_edit_spec(edit_dir, edited))
    adapter = get_adapter(edited)
    cfg = {**BASE, "data": train_file, "type": ft_type, "modules": "mlp", "lr": 1e-2 if ft_type == "full" else 1e-3}
    change = {}
    for strategy in ("none", "nullspace"):
        out = tmp_path / strategy
        manifest = finetune(str(edit_dir), {**cfg, "preserve_strategy": strategy}, out,
                            preserve_edits=edit_dir if strategy != "none" else None, progress=False)
        before, after = _weights(edit_dir), _weights(out)
        change[strategy] = {n: nullspace.output_change(adapter.as_out_in(after[n] - before[n]), keys[n].float())
                            for n in keys}
        assert all(torch.linalg.matrix_norm(after[n] - before[n]) > 0 for n in keys), "the projection did not train"
    assert max(change["nullspace"].values()) < 1e-4, change
    assert min(change["none"].values()) > 1e-2, change
    reported = manifest["preserve"]["output_change"]
    assert set(reported) == set(keys) and max(reported.values()) < 1e-4
    assert manifest["preserve"]["constrained"] == list(keys)


def test_replay_mixes_the_asked_rate(edits, tmp_path, train_file):
    edit_dir = edits["llama"]
    pool = replay.replay_pool(RECORDS)
    assert [(e.prompt, e.response) for e in pool[:2]] == [("Paris is located in", " Germany"),
                                                          ("Some say that Paris is located in", " Germany")]
    assert len(replay.replay_pool(RECORDS, paraphrases=False)) == len(RECORDS)
    cfg = {**BASE, "data": train_file, "type": "lora", "preserve_strategy": "replay", "replay_rate": 0.25,
           "max_steps": None, "epochs": 1.0}
    manifest = finetune(str(edit_dir), cfg, tmp_path / "ft", preserve_edits=edit_dir, progress=False)
    info = manifest["preserve"]
    assert info["n_corpus"] == 12 and info["n_replay"] == 4 and info["replay_share"] == pytest.approx(0.25)
    seen = [i for line in (tmp_path / "ft" / "train_log.jsonl").read_text().splitlines()
            for i in json.loads(line)["examples"]]
    assert len(seen) == 16 and sum(i >= 12 for i in seen) == 4  # one epoch: exactly the asked share
    assert replay.replay_count(900, 0.1) == 100
    with pytest.raises(ConfigError, match="replay_rate"):
        finetune(str(edit_dir), {**cfg, "replay_rate": 1.5}, tmp_path / "x", preserve_edits=edit_dir, progress=False)


def test_reedit_brings_the_edited_layer_back_to_its_target(edits, tmp_path, train_file):
    """Fine-tuning moves layer L's output at the subject tokens away from z; the re-edit brings it back."""
    from editdecay.edit.keys import subject_pass
    from editdecay.edit.prompts import Encoder, SubjectPrompts
    from editdecay.models.registry import load_model

    edit_dir = edits["llama"]
    edited, tok = load_model(edit_dir)
    spec = load_edit_spec(edit_dir, edited)
    prompts = SubjectPrompts.build(Encoder(tok), spec.requests(), spec.templates)

    def h_last(model) -> torch.Tensor:
        return subject_pass(model, get_adapter(model), prompts, key_layers=[2], z_layer=2).z_out

    cfg = {**BASE, "data": train_file, "type": "full", "lr": 3e-3, "max_steps": 4}
    finetune(str(edit_dir), cfg, tmp_path / "plain", progress=False)
    manifest = finetune(str(edit_dir), {**cfg, "preserve_strategy": "reedit", "reedit_z": "edited",
                                                      "reedit_reoptimise": False},
                        tmp_path / "reedit", preserve_edits=edit_dir, track_edits=edit_dir, progress=False)
    # the tracker's last scores are of the weights before the re-edit: the folder keeps none for reuse
    assert (tmp_path / "reedit" / "trajectory.json").exists()
    assert not (tmp_path / "reedit" / "edit_scores.json").exists()
    target = h_last(edited)  # reedit_z=edited: z is what the edited model reached
    drift = float((h_last(load_model(tmp_path / "plain")[0]) - target).norm())
    back = float((h_last(load_model(tmp_path / "reedit")[0]) - target).norm())
    assert drift > 0 and back < 0.2 * drift, (drift, back, manifest["preserve"]["reedit"])
    info = manifest["preserve"]
    assert info["reedit"]["n_records"] == len(RECORDS) and info["extra_seconds"] > 0
    assert set(load_file(str(tmp_path / "reedit" / info["reedit_deltas"]))) == set(_rewritten(edit_dir))


def test_adapter_only_reedit_keeps_the_reedit_beside_the_adapter(edits, tmp_path, train_file):
    """A grid's LoRA stage writes only the adapter: with reedit the re-edit's deltas sit beside it and loading the
    folder applies them after the merge, giving the merged output's weights (and the null-space residual of an
    adapter-only nullspace run is measured too)."""
    from editdecay.artifacts import REEDIT_DELTAS, folder_form
    from editdecay.models.registry import load_model

    edit_dir = edits["llama"]
    cfg = {**BASE, "data": train_file, "type": "lora", "lr": 3e-3, "preserve_strategy": "reedit",
           "reedit_z": "edited", "reedit_reoptimise": False}
    finetune(str(edit_dir), cfg, tmp_path / "merged", preserve_edits=edit_dir, progress=False)
    small = finetune(str(edit_dir), cfg, tmp_path / "small", preserve_edits=edit_dir, progress=False,
                     adapter_only=True)
    assert folder_form(tmp_path / "small") == "adapter" and not (tmp_path / "small" / "model.safetensors").exists()
    deltas = load_file(str(tmp_path / "small" / REEDIT_DELTAS))
    assert small["preserve"]["reedit_deltas"] == REEDIT_DELTAS and set(deltas) == set(_rewritten(edit_dir))
    assert all(float(d.abs().max()) > 0 for d in deltas.values())
    merged = load_model(tmp_path / "merged")[0].state_dict()
    layered = load_model(tmp_path / "small")[0].state_dict()  # edit + merged adapter + re-edit deltas
    assert set(merged) == set(layered)
    for k in merged:
        torch.testing.assert_close(layered[k], merged[k], atol=1e-6, rtol=0)
    nulls = finetune(str(edit_dir), {**cfg, "preserve_strategy": "nullspace"}, tmp_path / "null",
                     preserve_edits=edit_dir, progress=False, adapter_only=True)
    assert max(nulls["preserve"]["output_change"].values()) < 1e-4


def test_reedit_of_an_alphaedit_edit_solves_in_its_null_space_and_brings_the_layer_back(alphaedit_edit, tmp_path,
                                                                                        train_file):
    """Re-editing an AlphaEdit edit uses AlphaEdit's rule over the base model's C: each re-solved ΔW leaves the span of
    the preserved keys (C's eigenvectors at or above the threshold) untouched, ΔW = ΔW·P as the closed form
    ΔW = R Kᵀ P (KKᵀP + αI)⁻¹ makes it (a MEMIT solve does not), and layer L's output returns to z."""
    from editdecay.edit.keys import subject_pass
    from editdecay.edit.prompts import Encoder, SubjectPrompts
    from editdecay.edit.stats import second_moments
    from editdecay.models.registry import load_model

    edit_dir = alphaedit_edit
    edited, tok = load_model(edit_dir)
    spec = load_edit_spec(edit_dir, edited)
    assert spec.method == "alphaedit"
    prompts = SubjectPrompts.build(Encoder(tok), spec.requests(), spec.templates)

    def h_last(model) -> torch.Tensor:
        return subject_pass(model, get_adapter(model), prompts, key_layers=[2], z_layer=2).z_out

    cfg = {**BASE, "data": train_file, "type": "full", "lr": 3e-3, "max_steps": 4}
    finetune(str(edit_dir), cfg, tmp_path / "plain", progress=False)
    manifest = finetune(str(edit_dir), {**cfg, "preserve_strategy": "reedit", "reedit_z": "edited",
                                        "reedit_reoptimise": False},
                        tmp_path / "reedit", preserve_edits=edit_dir, progress=False)
    target = h_last(edited)  # reedit_z=edited: z is what the edited model reached
    drift = float((h_last(load_model(tmp_path / "plain")[0]) - target).norm())
    back = float((h_last(load_model(tmp_path / "reedit")[0]) - target).norm())
    assert drift > 0 and back < 0.2 * drift, (drift, back, manifest["preserve"]["reedit"])

    base, base_tok = load_model(edit_dir.parent / "base")
    adapter = get_adapter(base)
    cov = second_moments(base, base_tok, adapter, ALPHA["layers"], n_tokens=ALPHA["mom2_n_tokens"],
                         seq_len=ALPHA["mom2_seq_len"], cache=None).cov
    deltas = load_file(str(tmp_path / "reedit" / manifest["preserve"]["reedit_deltas"]))
    assert set(deltas) == set(_rewritten(edit_dir))
    for layer in ALPHA["layers"]:
        eigvals, eigvecs = torch.linalg.eigh(cov[layer])
        kept = eigvecs[:, eigvals >= ALPHA["nullspace_threshold"]]  # the preserved keys' span, P's complement
        assert len(RECORDS) < kept.shape[1] < kept.shape[0] - len(RECORDS), kept.shape  # a real constraint
        dw = adapter.as_out_in(deltas[adapter.rewrite_name(layer) + ".weight"]).double()
        assert float(dw.norm()) > 0
        assert float((dw @ kept).norm()) < 1e-5 * float(dw.norm()), layer


def test_cli_contract_and_bad_input(edits, tmp_path, train_file, capsys):
    edit_dir = edits["gpt2"]
    argv = ["finetune", "--model", str(edit_dir), "--type", "lora", "--data", train_file, "--max-steps", "2",
            "--batch-size", "2", "--set", "r=4", "--preserve-edits", str(edit_dir), "--strategy", "freeze",
            "--out", str(tmp_path / "ft"), "--no-progress"]
    assert cli_main(argv) == 0
    assert json.loads((tmp_path / "ft" / "manifest.json").read_text())["preserve"]["strategy"] == "freeze"
    capsys.readouterr()
    no_strategy = [a for a in argv if a not in ("--strategy", "freeze")]
    assert cli_main(no_strategy[:-3] + ["--out", str(tmp_path / "a"), "--no-progress"]) == 1
    assert "--strategy" in capsys.readouterr().err
    only_mlp = argv[:-3] + ["--layers", "1,2", "--modules", "down_proj", "--out", str(tmp_path / "b"), "--no-progress"]
    assert cli_main([a if a != "down_proj" else "c_proj" for a in only_mlp]) == 1  # GPT-2's rewritten projection
    assert "leaves nothing to train" in capsys.readouterr().err
    not_edit = tmp_path / "not-edit"
    not_edit.mkdir()
    assert cli_main(argv[:-3] + ["--preserve-edits", str(not_edit), "--out", str(tmp_path / "c"), "--no-progress"]) == 1
    assert "manifest.json" in capsys.readouterr().err


def test_the_grid_and_the_finetune_config_read_one_list_of_strategies():
    from editdecay.experiment import schema
    from editdecay.finetune.config import FinetuneConfig
    from editdecay.preserve import STRATEGIES

    assert schema.PRESERVE is STRATEGIES
    with pytest.raises(ConfigError, match="preserve_strategy.*" + ", ".join(STRATEGIES)):
        FinetuneConfig.from_dict({"type": "lora", "preserve_strategy": "pin"}).validate()
