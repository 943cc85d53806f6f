"""Analyses written into the store and drawn from it: schema 2 upgrade of an older store, a schema-1 store read
as "no such analysis" (the report never opens the artifacts), `editdecay analyze shift/layer-change --store`
rows equal to the per-folder analysis, and the weight change of a deltas-only edit equal to its full form's."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch
from helpers.store import MODELS, build_store, make_artifacts, write_corpus

RECORDS = [
    {"case_id": "a", "subject": "Danielle Darrieux", "prompt": "The mother tongue of {} is", "target_new": "English",
     "target_true": "French"},
    {"case_id": "b", "subject": "Toko Yasuda", "prompt": "{} plays the", "target_new": "piano", "target_true": "guitar"},
]


def test_an_older_store_gains_the_analysis_tables(tmp_path):
    from editdecay.experiment.store import ANALYSIS_TABLES, SCHEMA_VERSION, Store

    path = tmp_path / "old.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    for table in ANALYSIS_TABLES:
        conn.execute(f"DROP TABLE {table}")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.execute("INSERT INTO runs (run_id, model) VALUES ('r', 'm')")
    conn.commit()
    conn.close()
    with Store(path) as store:
        tables = {r[0] for r in store.query("SELECT name FROM sqlite_master WHERE type='table'")}
        assert set(ANALYSIS_TABLES) <= tables
        assert store.query("SELECT value FROM meta WHERE key='schema_version'")[0][0] == str(SCHEMA_VERSION) == "3"
        assert [r[0] for r in store.query("SELECT run_id FROM runs")] == ["r"]
        store.put_target_frequency("c", {"Paris": 3})
        store.note_analysis("target_frequency", "d", "failed", "unreadable")
    assert {(r[0], r[1]) for r in sqlite3.connect(path).execute("SELECT analysis, subject FROM analyses")} == {
        ("target_frequency", "c"), ("target_frequency", "d")}


def test_a_store_without_analyses_is_reported_without_opening_artifacts(tmp_path, tiny_tok):
    """Artifacts and corpus are on disk, but the store (schema 1: no analysis tables) holds no analysis."""
    from editdecay.report.api import build_report

    arts = make_artifacts(tmp_path, tiny_tok)
    store = build_store(tmp_path / "r.db", seeds=(0,), models=MODELS[:1], methods=("memit",), ft_types=("full",),
                        layers=("all",), ft_data=str(write_corpus(tmp_path / "ft.jsonl")),
                        artifacts={(MODELS[0], "memit", 0): arts})
    report = build_report(store)
    skipped = {f.name: f.reason for f in report.figures if not hasattr(f, "png")}
    assert "editdecay analyze" in skipped["layer_change"]
    assert "editdecay analyze frequency" in skipped["survival_vs_frequency"]
    assert not {t[0] for t in sqlite3.connect(store).execute("SELECT name FROM sqlite_master")} & {"layer_change"}


@pytest.fixture(scope="module")
def shift_store(tmp_path_factory, tiny_tok):
    """A one-run store whose base, edit (full and deltas-only) and fine-tune folders are on disk."""
    from safetensors.torch import save_file

    from editdecay.models.tiny import tiny_model

    root = tmp_path_factory.mktemp("analyze_store")
    model, tok = tiny_model("llama", tokenizer=tiny_tok, n_layers=4, d_model=64, seed=1)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    w = model.model.layers[1].mlp.down_proj.weight
    delta = 0.5 * torch.randn(w.shape, generator=torch.Generator().manual_seed(3))
    records = [dict(r, paraphrase_prompts=[], neighborhood_prompts=[], neighborhood_answers=[], attribute_prompts=[],
                    generation_prompts=[], dataset="counterfact") for r in RECORDS]
    manifest = {"stage": "edit", "method": "memit", "layers": [1], "records": records,
                "base_model": str(root / "base"), "base_model_path": str(root / "base")}
    with torch.no_grad():
        w.add_(delta)
    model.save_pretrained(root / "edit")
    tok.save_pretrained(root / "edit")
    (root / "small").mkdir()
    for folder in (root / "edit", root / "small"):
        save_file({"model.layers.1.mlp.down_proj.weight": delta.contiguous()}, str(folder / "deltas.safetensors"))
        (folder / "manifest.json").write_text(json.dumps({**manifest, "form": "full" if folder.name == "edit"
                                                          else "deltas"}))
    with torch.no_grad():
        w.add_(2 * delta)
        model.model.layers[3].mlp.up_proj.weight.mul_(1.1)
    model.save_pretrained(root / "ft")
    tok.save_pretrained(root / "ft")
    store = build_store(root / "r.db", seeds=(0,), models=MODELS[:1], methods=("memit",), ft_types=("full",),
                        layers=("all",), artifacts={(MODELS[0], "memit", 0): {"edit": str(root / "edit"),
                                                                             "ft": str(root / "ft")}})
    conn = sqlite3.connect(store)
    conn.execute("UPDATE stages SET artifact = ? WHERE kind = 'base'", (str(root / "base"),))
    conn.commit()
    conn.close()
    return store, root


def test_shift_into_the_store_equals_the_folder_analysis(shift_store):
    from editdecay.analyze.shift import activation_shift
    from editdecay.cli import main
    from editdecay.report.api import build_report
    from editdecay.report.load import load_results
    from editdecay.report.shift import per_layer

    store, root = shift_store
    assert main(["analyze", "shift", "--store", str(store), "--layers", "1-2"]) == 0
    res = load_results(store)
    (stage_id, rows), = res.activation_shift.items()
    assert stage_id.startswith("ft-ed-") and len(rows) == 2 * len(RECORDS)
    direct = activation_shift(root / "base", root / "edit", root / "ft", layers=[1, 2])
    for got, want in zip(per_layer(rows), direct["per_layer"], strict=True):
        for key in ("layer", "edit_shift", "ft_shift", "ratio", "edit_shift_rel", "angle_deg", "n_angle_defined"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), key
    assert per_layer(rows)[0]["ratio"] == pytest.approx(2.0, rel=1e-4)
    table = {t.name: t for t in build_report(store, with_figures=False).tables}["activation_shift"]
    assert [r["layer"] for r in table.rows] == [1, 2]


def test_a_deltas_only_edit_is_read_lazily_with_the_materialised_numbers(shift_store, monkeypatch):
    """W_base + ΔW per tensor, read from the base's files, gives what loading the edited model gives."""
    import editdecay.analyze.weights as weights

    _, root = shift_store
    assert weights._readable_base(root / "small") is not None
    lazy = (weights.edit_change(root / "small"), weights.finetune_change(root / "small", root / "ft"))
    monkeypatch.setattr(weights, "_readable_base", lambda folder: None)  # force materialising the edited model
    loaded = (weights.edit_change(root / "small"), weights.finetune_change(root / "small", root / "ft"))
    assert lazy[0][1] == loaded[0][1] and lazy[0][0] == pytest.approx(loaded[0][0], rel=1e-6)
    assert lazy[1] == pytest.approx(loaded[1], rel=1e-6, abs=1e-9)


def test_layer_change_into_the_store_and_from_a_deltas_only_edit(shift_store, capsys):
    from editdecay.analyze.weights import edit_change, finetune_change
    from editdecay.cli import main
    from editdecay.report.load import load_results
    from editdecay.report.plots import stored_layer_change

    store, root = shift_store
    assert main(["analyze", "layer-change", "--store", str(store)]) == 0
    res = load_results(store)
    ft_change, edit, edited = stored_layer_change(res, res.runs[0])
    assert edited == [1] and sorted(edit) == [1]
    assert ft_change == pytest.approx(finetune_change(root / "edit", root / "ft"), rel=1e-9)
    assert ft_change[0] == ft_change[2] == 0.0 and ft_change[1] > 0 and ft_change[3] > 0
    small, small_layers = edit_change(root / "small")
    assert small_layers == [1] and small[1] == pytest.approx(edit[1], rel=1e-5)
    assert finetune_change(root / "small", root / "ft") == pytest.approx(ft_change, rel=1e-4, abs=1e-7)
    capsys.readouterr()
    assert main(["analyze", "layer-change", "--store", str(store)]) == 0  # measured once: not computed again
    assert "already in the store" in capsys.readouterr().out
    assert stored_layer_change(load_results(store), res.runs[0])[0] == ft_change


def test_frequency_counts_and_an_unreadable_corpus_are_stored_and_quoted(tmp_path):
    from editdecay.cli import main
    from editdecay.report.api import build_report
    from editdecay.report.load import load_results

    corpus = write_corpus(tmp_path / "ft.jsonl")
    store = build_store(tmp_path / "r.db", seeds=(0,), models=MODELS[:1], methods=("memit",), ft_types=("lora",),
                        layers=("all",), ft_data=str(corpus))
    assert main(["analyze", "frequency", "--store", str(store)]) == 0
    counts = load_results(store).target_frequency[str(corpus)]
    assert counts["Paris"] == sum(i % 3 + 1 for i in range(60)) and counts["Tokyo"] == 6 and counts["Berlin"] == 0
    corpus.unlink()  # the report does not need the corpus any more
    assert "survival_vs_frequency" in {f.name for f in build_report(store).figures if hasattr(f, "png")}
    conn = sqlite3.connect(store)
    conn.execute("UPDATE runs SET ft_data = 'no-such-corpus.jsonl'")
    conn.commit()
    conn.close()
    assert main(["analyze", "frequency", "--store", str(store)]) == 0
    res = load_results(store)
    status, note = res.analyses[("target_frequency", "no-such-corpus.jsonl")]
    assert status == "failed" and "no-such-corpus.jsonl" in note
    skipped = {f.name: f.reason for f in build_report(res).figures if not hasattr(f, "png")}
    assert skipped["survival_vs_frequency"] == note


def test_analyze_refuses_a_missing_store(tmp_path, capsys):
    from editdecay.cli import main

    for analysis in ("layer-change", "frequency", "shift"):
        assert main(["analyze", analysis, "--store", str(tmp_path / "none" / "r.db")]) == 1
        assert "results store not found" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
