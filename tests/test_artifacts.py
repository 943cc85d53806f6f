"""Small artifact folders (deltas-only edits, adapter-only fine-tunes) load as exactly the weights their full
forms hold, through every command's --model, and `export` turns them into plain model folders."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.edits import FAST, RECORDS
from transformers import AutoModelForCausalLM

from editdecay.artifacts import folder_form, read_finetune_manifest, write_erase_manifest
from editdecay.cli import main as cli_main
from editdecay.edit.api import edit_to_folder
from editdecay.edit.targets_cache import TargetCache
from editdecay.errors import ConfigError, DataError, ModelError
from editdecay.finetune.api import finetune
from editdecay.models.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")
FT = {"batch_size": 2, "max_length": 48, "warmup_steps": 0, "max_steps": 3, "lr": 1e-2, "r": 4, "alpha": 8}


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_tok):
    """A saved tiny base, a full and a deltas-only edit of it (one shared z optimisation), a corpus."""
    from editdecay.models.tiny import tiny_model

    root = tmp_path_factory.mktemp("artifacts")
    torch.set_num_threads(1)
    model, tok = tiny_model("llama", tokenizer=tiny_tok, n_layers=4, d_model=64, seed=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
    base = root / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    cache = TargetCache(root / "z")
    hp = dict(FAST, v_num_grad_steps=3)
    for name, deltas_only in (("full", False), ("deltas", True)):
        edit_to_folder(str(base), RECORDS, root / name, hparams=hp, stats_cache=False, progress=False,
                       targets_cache=cache, deltas_only=deltas_only)
    corpus = root / "train.jsonl"
    corpus.write_text("".join(json.dumps({"prompt": f"Fact {i}: ", "response": f"the sky is {c}"}) + "\n"
                              for i, c in enumerate(["blue", "grey", "red", "dark", "clear", "white"])))
    return {"root": root, "base": base, "full": root / "full", "deltas": root / "deltas", "corpus": str(corpus)}


def test_deltas_only_edit_folder_is_small_and_loads_as_the_full_edit(folders):
    full, deltas = folders["full"], folders["deltas"]
    assert folder_form(full) == "model" and folder_form(deltas) == "edit-deltas"
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())  # noqa: E731
    assert size(deltas) < 0.3 * size(full)
    assert json.loads((deltas / "manifest.json").read_text())["form"] == "deltas"
    _assert_same(_weights(load_model(deltas)[0]), _weights(load_model(full)[0]))
    assert not torch.equal(load_model(deltas)[0].model.layers[2].mlp.down_proj.weight,
                           load_model(folders["base"])[0].model.layers[2].mlp.down_proj.weight)


@pytest.mark.parametrize("ft_type", ["lora", "dora"])
def test_adapter_only_finetune_loads_as_the_merged_model(folders, ft_type):
    root = folders["root"]
    cfg = dict(FT, type=ft_type, data=folders["corpus"])
    finetune(str(folders["deltas"]), cfg, root / f"{ft_type}-merged", progress=False)
    finetune(str(folders["deltas"]), cfg, root / f"{ft_type}-adapter", progress=False, adapter_only=True)
    small = root / f"{ft_type}-adapter"
    assert folder_form(small) == "adapter" and not (small / "model.safetensors").exists()
    merged = _weights(load_model(root / f"{ft_type}-merged")[0])
    layered = _weights(load_model(small)[0])  # base + deltas + merged adapter
    assert set(merged) == set(layered)
    for k in merged:
        torch.testing.assert_close(layered[k], merged[k], atol=1e-6, rtol=0)
    edited = _weights(load_model(folders["deltas"])[0])
    assert any(not torch.equal(layered[k], edited[k]) for k in edited)  # the fine-tune did change weights


def test_export_writes_a_plain_model_folder(folders, tmp_path, capsys):
    out = tmp_path / "exported"
    assert cli_main(["export", str(folders["deltas"]), "--out", str(out)]) == 0
    plain = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    _assert_same(_weights(plain), _weights(load_model(folders["full"])[0]))
    assert cli_main(["export", str(folders["deltas"]), "--out", str(out)]) == 1  # refuses to overwrite
    assert "not empty" in capsys.readouterr().err


def test_a_folder_of_no_known_form_is_refused_clearly(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"stage": "edit"}))
    with pytest.raises(ModelError, match="not a model folder"):
        load_model(tmp_path)


FINETUNE_FIELDS = ["stage", "type", "layers", "modules", "target_modules", "trained_parameters",
                   "trained_parameter_names", "n_trained", "base_model", "edit_manifest", "tracked_records", "data",
                   "n_examples", "config", "learning_rate", "run_hash", "identity", "steps", "resumed_from", "tokens",
                   "loss_tokens", "final_loss", "timings", "versions", "seed", "dtype", "trajectory", "form"]


def test_finetune_manifest_fields_in_order_read_back_and_checked(folders, tmp_path):
    """The fine-tune folder's manifest (artifacts.write_finetune_manifest): docs/design.md's fields in order, read
    back by read_finetune_manifest (a rerun of the same run returns it), bad fields named with the file."""
    cfg = dict(FT, type="lora", data=folders["corpus"], max_steps=2)
    out = tmp_path / "ft"
    manifest = finetune(str(folders["deltas"]), cfg, out, track_edits=folders["deltas"], progress=False)
    assert list(manifest) == FINETUNE_FIELDS
    assert list(manifest["timings"]) == ["train_seconds", "tokens_per_s", "total_seconds"]
    assert manifest["trajectory"] == "trajectory.json" and manifest["form"] == "model"
    assert manifest["n_trained"] == sum(manifest["trained_parameters"].values()) > 0
    on_disk = (out / "manifest.json").read_text()
    assert read_finetune_manifest(out) == json.loads(on_disk) == manifest
    assert finetune(str(folders["deltas"]), cfg, out, track_edits=folders["deltas"], progress=False) == manifest
    assert (out / "manifest.json").read_text() == on_disk  # not trained or written again

    bad = tmp_path / "bad"
    bad.mkdir()
    for change, field in (({"stage": "edit"}, "stage"), ({"layers": [1, "2"]}, "layers"), ({"form": "deltas"}, "form"),
                          ({"base_model": None}, "base_model"), ({"run_hash": 3}, "run_hash")):
        (bad / "manifest.json").write_text(json.dumps({**manifest, **change}))
        with pytest.raises(DataError, match=rf"bad/manifest.json, field '{field}'"):
            read_finetune_manifest(bad)
    # an edit folder where the fine-tune goes is refused as what it is
    with pytest.raises(ConfigError, match="holds something that is not a fine-tune folder"):
        finetune(str(folders["deltas"]), cfg, folders["full"], progress=False)
    assert not (folders["full"] / "adapter").exists()


def test_erase_manifest_is_written_as_given_and_its_contract_checked(tmp_path):
    manifest = {"stage": "erase", "model": "m", "base": None, "records_source": "r.jsonl", "located_layers": [1, 2],
                "mode": "records", "strategy": "project", "n_records": 3, "held_before": 3, "erased": 2,
                "still_holding": 1, "seconds": 0.5}
    assert write_erase_manifest(tmp_path, manifest) is manifest
    assert list(json.loads((tmp_path / "manifest.json").read_text())) == list(manifest)
    weights_only = {"stage": "erase", "records_source": None, "located_layers": [3]}  # nothing counted: no counts
    write_erase_manifest(tmp_path / "w", weights_only)
    for change, field in (({"stage": "edit"}, "stage"), ({"located_layers": [1.0]}, "located_layers"),
                          ({"located_layers": None}, "located_layers"), ({"erased": None}, "erased"),
                          ({"still_holding": True}, "still_holding")):
        with pytest.raises(DataError, match=rf"b/manifest.json, field '{field}'"):
            write_erase_manifest(tmp_path / "b", {**manifest, **change})
    with pytest.raises(DataError, match="field 'still_holding'"):  # records given: both counts are part of it
        write_erase_manifest(tmp_path / "b", {k: v for k, v in manifest.items() if k != "still_holding"})
    assert not (tmp_path / "b" / "manifest.json").exists()
