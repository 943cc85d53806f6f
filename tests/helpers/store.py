"""A results store built with the schema of docs/design.md by plain SQL (so the report tests do not depend on the
experiment package), a synthetic grid with known effects in it, and small artifact folders the analyses read.

:func:`build_store`: 2 models x 2 methods x 3 fine-tuning types x 3 layer selections x 2 seeds, 20 records per
evaluation; :data:`SCHEMA` alone serves tests that write their own rows.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE runs (run_id TEXT PRIMARY KEY, grid TEXT, model TEXT, method TEXT, edit_data TEXT, n_edits INT,
    ft_type TEXT, layers TEXT, modules TEXT, ft_data TEXT, seed INT, config_json TEXT, status TEXT, created_at REAL);
CREATE TABLE stages (stage_id TEXT PRIMARY KEY, kind TEXT, status TEXT, config_json TEXT, artifact TEXT, error TEXT,
    attempts INT, started_at REAL, finished_at REAL, seconds REAL, versions_json TEXT);
CREATE TABLE run_groups (run_id TEXT, grp TEXT, eval_stage_id TEXT);
CREATE TABLE metrics (eval_stage_id TEXT, metric TEXT, value REAL);
CREATE TABLE record_metrics (eval_stage_id TEXT, case_id TEXT, metric TEXT, value REAL);
CREATE TABLE downstream (eval_stage_id TEXT, task TEXT, accuracy REAL, n INT);
CREATE TABLE trajectories (ft_stage_id TEXT, step INT, metric TEXT, value REAL);
CREATE TABLE run_stages (run_id TEXT, stage_id TEXT, role TEXT);
CREATE TABLE records (case_id TEXT, edit_data TEXT, subject TEXT, target_new TEXT, target_true TEXT, prompt TEXT);
"""

MODELS = ("smollm2-135m", "gemma3-270m")
METHODS = ("memit", "alphaedit")
FT_TYPES = ("full", "lora", "dora")
LAYERS = ("all", "edited", "non-edited")
TARGETS = ("Paris", "French", "Tokyo", "piano", "football", "Microsoft", "Berlin", "English", "guitar", "Italy")
XSS = "<script>alert(1)</script>"
N_RECORDS = 20
# survival probability of a successful edit: lower for AlphaEdit, lowest when only the edited layers train
SURVIVAL = {"all": 0.7, "edited": 0.15, "non-edited": 0.45}


def build_store(path: Path, seeds: tuple[int, ...] = (0, 1), models=MODELS, methods=METHODS, ft_types=FT_TYPES,
                layers=LAYERS, ft_data: str = "commonsense", artifacts: dict | None = None, rng_seed: int = 0) -> Path:
    """Write a results store with the design schema and a synthetic grid whose effects are known."""
    rng = np.random.default_rng(rng_seed)
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    cases = [f"cf{i}" for i in range(N_RECORDS)]
    for i, case in enumerate(cases):
        subject = XSS if i == 3 else f"Subject_{i} & co"
        conn.execute("INSERT INTO records VALUES (?,?,?,?,?,?)",
                     (case, "counterfact", subject, TARGETS[i % len(TARGETS)], "Rome", "{} is located in"))

    def stage(sid: str, kind: str, artifact: str | None = None) -> str:
        conn.execute("INSERT OR IGNORE INTO stages (stage_id, kind, status, config_json, artifact, attempts) "
                     "VALUES (?,?,?,?,?,1)", (sid, kind, "done", json.dumps({"id": sid}), artifact))
        return sid

    def evaluation(sid: str, per_record: dict[str, dict[str, float]], downstream: dict[str, float]) -> str:
        stage(sid, "evaluate")
        for case, values in per_record.items():
            for metric, value in values.items():
                conn.execute("INSERT INTO record_metrics VALUES (?,?,?,?)", (sid, case, metric, value))
        for metric in ("efficacy", "paraphrase", "neighborhood"):
            conn.execute("INSERT INTO metrics VALUES (?,?,?)",
                         (sid, metric, float(np.mean([v[metric] for v in per_record.values()]))))
        conn.execute("INSERT INTO metrics VALUES (?,?,?)", (sid, "n_records", float(len(per_record))))
        for task, acc in downstream.items():
            conn.execute("INSERT INTO downstream VALUES (?,?,?,?)", (sid, task, acc, 100))
        return sid

    def records(p_es: float, p_ns: float) -> dict[str, dict[str, float]]:
        return {c: {"efficacy": float(rng.random() < p_es), "paraphrase": float(rng.integers(0, 3)) / 2 * (p_es > 0.5),
                    "neighborhood": float(rng.random() < p_ns)} for c in cases}

    def after_ft(before: dict[str, dict[str, float]], p_survive: float) -> dict[str, dict[str, float]]:
        out = {}
        for c, v in before.items():
            keep = rng.random() < p_survive
            out[c] = {"efficacy": float(keep) if v["efficacy"] else float(rng.random() < 0.05),
                      "paraphrase": v["paraphrase"] * float(keep), "neighborhood": float(rng.random() < 0.85)}
        return out

    run_index = 0
    shared: dict[tuple, str] = {}
    for model in models:
        base_eval = evaluation(f"eval-M-{model}", records(0.05, 0.9), {"boolq": 0.55, "piqa": 0.6})
        stage(f"base-{model}", "base")
        for seed in seeds:
            for ft in ft_types:
                for sel in layers:
                    key = ("Mft", model, ft, sel, seed)
                    if key not in shared:
                        stage(f"ft-base-{model}-{ft}-{sel}-{seed}", "finetune")
                        shared[key] = evaluation(f"eval-M_ft-{model}-{ft}-{sel}-{seed}", records(0.05, 0.88),
                                                 {"boolq": 0.7, "piqa": 0.66 - 0.03 * (sel == "edited")})
            for method in methods:
                edit_id = f"edit-{model}-{method}-{seed}"
                art = (artifacts or {}).get((model, method, seed))
                stage(edit_id, "edit", art["edit"] if art else None)
                ed_records = records(0.95, 0.8)
                ed_eval = evaluation(f"eval-M_ed-{model}-{method}-{seed}", ed_records, {"boolq": 0.54, "piqa": 0.59})
                for ft in ft_types:
                    for sel in layers:
                        run_id = f"run{run_index:03d}"
                        run_index += 1
                        ft_id = stage(f"ft-ed-{run_id}", "finetune", art["ft"] if art and (ft, sel) == (ft_types[0], "all")
                                      else None)
                        p = SURVIVAL[sel] - (0.2 if method == "alphaedit" else 0.0)
                        ft_records = after_ft(ed_records, p)
                        ft_eval = evaluation(f"eval-M_ed_ft-{run_id}", ft_records,
                                             {"boolq": 0.69 - 0.04 * (sel == "non-edited"), "piqa": 0.65})
                        es0 = float(np.mean([v["efficacy"] for v in ed_records.values()]))
                        es1 = float(np.mean([v["efficacy"] for v in ft_records.values()]))
                        for step in (0, 5, 10):
                            conn.execute("INSERT INTO trajectories VALUES (?,?,?,?)",
                                         (ft_id, step, "efficacy", es0 + (es1 - es0) * step / 10))
                        conn.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                     (run_id, "test", model, method, "counterfact", N_RECORDS, ft, sel, "attn,mlp",
                                      ft_data, seed, "{}", "done", 0.0))
                        for grp, sid in (("M", base_eval), ("M_ft", shared[("Mft", model, ft, sel, seed)]),
                                         ("M_ed", ed_eval), ("M_ed_ft", ft_eval)):
                            conn.execute("INSERT INTO run_groups VALUES (?,?,?)", (run_id, grp, sid))
                        for role, sid in (("base", f"base-{model}"), ("edit", edit_id),
                                          ("finetune_base", f"ft-base-{model}-{ft}-{sel}-{seed}"),
                                          ("finetune_edit", ft_id)):
                            conn.execute("INSERT INTO run_stages VALUES (?,?,?)", (run_id, sid, role))
    conn.commit()
    conn.close()
    return path


def write_corpus(path: Path) -> Path:
    """A fine-tuning corpus (JSONL prompt/response) where some targets are frequent and some absent."""
    lines = []
    for i in range(60):
        lines.append({"prompt": f"Question {i}: where is it?", "response": "Paris is in France. " * (i % 3 + 1)
                      + ("They speak French. " if i % 2 else "") + ("Tokyo." if i % 10 == 0 else "")})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def make_artifacts(folder: Path, tok) -> dict:
    """A tiny edit folder (weights + deltas.safetensors + manifest) and a fine-tuned folder with known changes."""
    import torch
    from safetensors.torch import save_file

    from editdecay.models.tiny import tiny_model

    model, _ = tiny_model("llama", tokenizer=tok, n_layers=4, d_model=64, seed=0)
    gen = torch.Generator().manual_seed(0)
    deltas = {}
    with torch.no_grad():
        for layer in (1, 2):
            w = model.model.layers[layer].mlp.down_proj.weight
            delta = 0.1 * torch.randn(w.shape, generator=gen)
            w.add_(delta)
            deltas[f"model.layers.{layer}.mlp.down_proj.weight"] = delta.contiguous()
    edit_dir, ft_dir = folder / "edit", folder / "ft"
    model.save_pretrained(edit_dir)
    save_file(deltas, str(edit_dir / "deltas.safetensors"))
    (edit_dir / "manifest.json").write_text(json.dumps({"stage": "edit", "method": "memit", "layers": [1, 2]}))
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            for p in layer.parameters():
                p.add_((0.3 if i == 3 else 0.01) * p.detach().abs().mean() * torch.randn(p.shape, generator=gen))
    model.save_pretrained(ft_dir)
    (ft_dir / "manifest.json").write_text(json.dumps({"stage": "finetune", "type": "full", "base_model": str(edit_dir)}))
    return {"edit": str(edit_dir), "ft": str(ft_dir)}


def analyze_store(store: Path) -> Path:
    """Write the artifact analyses (per-layer weight change, target frequency) into the store, as
    `editdecay analyze` does before a report: the report itself reads only the store."""
    from editdecay.cli import main

    for analysis in ("layer-change", "frequency"):
        assert main(["analyze", analysis, "--store", str(store)]) == 0
    return store
