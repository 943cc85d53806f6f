"""Measure `editdecay erase` on real SmolLM2 edits (1, 10, 100 CounterFact edits; MEMIT and AlphaEdit).

    # 1. make the edit folders (shared, reused by others): /work/shared-edits/smollm2-135m-<method>-cf<N>
    nohup flock /tmp/editdecay-heavy.lock env OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python \
        scripts/erase_eval.py make-edits > /tmp/erase_eval.log 2>&1 &
    # 2. measure location / tracing / reversal / removal on each (resumable: one JSON per case)
    nohup flock /tmp/editdecay-heavy.lock env OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python \
        scripts/erase_eval.py measure > /tmp/erase_eval.log 2>&1 &

Edits use the project's default hparams and the first N records of ``load_edit_records("counterfact")``
so their target values come from the shared target cache. Results: ``benchmarks/results/erase/*.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from editdecay.stats import SUCCESS_THRESHOLD

ROOT = Path(__file__).resolve().parent.parent
EDITS = Path(os.environ.get("EDITDECAY_SHARED_EDITS", "/work/shared-edits"))
RESULTS = Path(os.environ.get("EDITDECAY_ERASE_RESULTS", ROOT / "benchmarks" / "results" / "erase"))
MODEL = "smollm2-135m"
SIZES = (1, 10, 100)
METHODS = ("memit", "alphaedit")


def edit_dir(method: str, n: int) -> Path:
    return EDITS / f"{MODEL}-{method}-cf{n}"


def make_edits(args: argparse.Namespace) -> None:
    import torch

    from editdecay import api

    torch.set_num_threads(1)
    base, tok = api.load_model(MODEL)
    records = api.load_edit_records("counterfact", n=max(SIZES))
    for method in args.methods:
        for n in args.sizes:
            out = edit_dir(method, n)
            if (out / "manifest.json").exists():
                print(f"{out}: exists", flush=True)
                continue
            import copy

            t = time.perf_counter()
            api.edit_to_folder(MODEL, records[:n], out, method=method, model=copy.deepcopy(base), tok=tok,
                               records_source=f"counterfact[:{n}]", progress=True)
            print(f"{out}: {time.perf_counter() - t:.0f}s", flush=True)


def _es(model, tok, records) -> list[float]:
    from editdecay.evaluate.api import evaluate_edits

    return [r["efficacy"] for r in evaluate_edits(model, tok, records)["records"]]


def _downstream(model, tok, limit: int) -> float:
    from editdecay.evaluate.api import evaluate_downstream

    return float(evaluate_downstream(model, tok, limit=limit)["mean"])


def _reversal(es_base: list[float], es_edited: list[float], es_after: list[float]) -> dict:
    """Reversal rate: of the edits that the edit made hold (ES ≤ 0.5 before editing, > 0.5 after), the fraction
    that no longer hold (ES ≤ 0.5); also the same over every record that held in the edited model."""
    T = SUCCESS_THRESHOLD  # one success threshold for every count (editdecay.stats)
    made = [i for i in range(len(es_edited)) if es_edited[i] > T and es_base[i] <= T]
    held = [i for i, e in enumerate(es_edited) if e > T]
    return {"made_hold": len(made), "reversed": sum(es_after[i] <= T for i in made),
            "reversal_rate": sum(es_after[i] <= T for i in made) / len(made) if made else None,
            "held": len(held), "erased": sum(es_after[i] <= T for i in held),
            "still_holding": sum(e > T for e in es_after), "es_mean": sum(es_after) / len(es_after)}


def _layer_accuracy(located: list[int], truth: list[int], n_layers: int) -> dict:
    tp = len(set(located) & set(truth))
    correct = sum((i in located) == (i in truth) for i in range(n_layers))
    return {"located": located, "truth": truth, "precision": tp / len(located) if located else None,
            "recall": tp / len(truth), "accuracy": correct / n_layers, "exact": sorted(located) == sorted(truth)}


def measure_case(method: str, n: int, args: argparse.Namespace) -> dict:
    """Every erase mode on one edit folder; each finished part is saved at once (a rerun resumes)."""
    import copy

    import torch

    from editdecay import api
    from editdecay.erase import locate, reverse, trace
    from editdecay.util.env import library_versions
    from editdecay.util.io import atomic_write_json, read_json

    torch.set_num_threads(1)
    folder = edit_dir(method, n)
    out_path = RESULTS / f"{method}-cf{n}.json"
    res = read_json(out_path) if out_path.exists() else {}
    res.update(method=method, n_edits=n, edit_folder=str(folder), model=MODEL, downstream_limit=args.limit,
               machine=f"{os.cpu_count()}-core CPU, 1 torch thread, float32", versions=library_versions())

    def save(key: str, value) -> None:
        res[key] = value
        res["load_avg"] = os.getloadavg()
        atomic_write_json(out_path, res)
        print(f"[{method} cf{n}] {key}: {json.dumps(value)[:300]}", flush=True)

    edited, tok = api.load_model(folder)
    base, _ = api.load_model(MODEL)
    adapter = api.get_adapter(edited)
    n_layers = adapter.num_layers(edited)
    from editdecay.evaluate.api import load_records_arg

    records = load_records_arg(folder / "manifest.json")
    targets = [r.target_new for r in records]
    if "es_edited" not in res:
        save("es_base", _es(base, tok, records))
        save("es_edited", _es(edited, tok, records))
    if "downstream_base" not in res and args.limit:
        save("downstream_base", _downstream(base, tok, args.limit))
        save("downstream_edited", _downstream(edited, tok, args.limit))
    es_edited = res["es_edited"]

    changes = locate.diff_changes(edited, base, adapter)
    truth = sorted({c.layer for c in changes if c.layer is not None})
    reader = trace.DirectionReader(edited, tok, adapter)
    if "with_base" not in res:
        t = time.perf_counter()
        traced = []
        for c in changes:
            delta = adapter.as_out_in(dict(edited.named_parameters())[c.name].detach().double()
                                      - dict(base.named_parameters())[c.name].detach().double())
            u, s, _ = reverse.top_components(delta, min(c.rank or 1, n))
            traced += trace.trace_directions(reader, c.layer, u, s)
        last = [d for d in traced if d.layer == max(truth)]
        save("with_base", {
            "location": _layer_accuracy(truth, read_json(folder / "manifest.json")["layers"], n_layers),
            "changes": [{"name": c.name, "rank": c.rank, "rel_norm": c.rel_norm} for c in changes],
            "tracing_top1_all_layers": trace.tracing_accuracy(traced, targets, tok, top=1),
            "tracing_top5_all_layers": trace.tracing_accuracy(traced, targets, tok, top=5),
            "tracing_top1_last_layer": trace.tracing_accuracy(last, targets, tok, top=1),
            "tracing_top5_last_layer": trace.tracing_accuracy(last, targets, tok, top=5),
            "example_traced": [d.to_dict() for d in last[:5]], "seconds": time.perf_counter() - t})
    if "weights_only" not in res:
        t = time.perf_counter()
        scores = locate.weights_only_scores(edited, adapter)
        located = scores["located_layers"]
        ks = {r["layer"]: max(1, r["n_outliers"]) for r in scores["layers"] if r["layer"] in located}
        traced = [d for layer, k in ks.items() for d in trace.trace_directions(
            reader, layer, *reverse.top_components(locate.rewrite_matrix(edited, adapter, layer), k)[:2])]
        save("weights_only", {
            "location": _layer_accuracy(located, truth, n_layers),
            "scores": [round(r["score"], 3) for r in scores["layers"]], "ks": ks,
            "tracing_top1": trace.tracing_accuracy(traced, targets, tok, top=1),
            "tracing_top5": trace.tracing_accuracy(traced, targets, tok, top=5),
            "seconds": time.perf_counter() - t})
    # reversals: weights-only SVD at the located layers, and at the true layers (reversal given location)
    for name in ("svd_located", "svd_true_layers", "reedit", "project", "finetune"):
        if name in res or name not in args.parts:
            continue
        t = time.perf_counter()
        model = copy.deepcopy(edited)
        info: dict = {}
        if name == "svd_located":
            ks = res["weights_only"]["ks"]
            if not ks:
                save(name, {"skipped": "no layer located"})
                continue
            info["removed"] = reverse.remove_top_components(model, adapter, {int(k): v for k, v in ks.items()})
        elif name == "svd_true_layers":
            info["removed"] = reverse.remove_top_components(model, adapter, {layer: n for layer in truth})
        elif name == "reedit":
            info = reverse.reedit_true(model, tok, records, truth, str(folder), method=method)
            info = {"layers": info["layers"], "timings": info["timings"]}
        elif name == "project":
            info["removed_norm"] = reverse.project_out_keys(model, tok, adapter, records, truth)
        else:
            work = Path("/tmp") / f"erase-eval-{method}-cf{n}"
            model, ft = reverse.finetune_layers(model, tok, truth, args.budget_steps, work)
            info = {"steps": ft["steps"], "layers": ft["layers"], "final_loss": ft["final_loss"]}
        es = _es(model, tok, records)
        row = {**_reversal(res["es_base"], es_edited, es), **info}
        if args.limit:
            row["downstream"] = _downstream(model, tok, args.limit)
            row["downstream_cost"] = res["downstream_edited"] - row["downstream"]
        row["seconds"] = time.perf_counter() - t
        save(name, row)
    return res


def measure(args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for method in args.methods:
        for n in args.sizes:
            if (edit_dir(method, n) / "manifest.json").exists():
                measure_case(method, n, args)
            else:
                print(f"{edit_dir(method, n)}: no edit folder; run make-edits first", flush=True)


def table(args: argparse.Namespace) -> str:
    """The docs table: one row per (method, n) from the result JSONs."""
    from editdecay.util.io import read_json

    def f(x, digits=2):
        return "—" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))

    lines = ["| method | n | layers (ΔW) | weights-only layers (precision / recall) | tracing top-5, ΔW / weights-only "
             "| removal | reversed (of made-hold) | ES after | downstream (edited → after) | s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for method in args.methods:
        for n in args.sizes:
            path = RESULTS / f"{method}-cf{n}.json"
            if not path.exists():
                continue
            r = read_json(path)
            wb, wo = r.get("with_base", {}), r.get("weights_only", {})
            loc = wo.get("location", {})
            head = [method, str(n), str(wb.get("location", {}).get("located", "—")),
                    f"{loc.get('located', '—')} ({f(loc.get('precision'))} / {f(loc.get('recall'))})",
                    f"{f(wb.get('tracing_top5_all_layers', {}).get('accuracy'))} / "
                    f"{f(wo.get('tracing_top5', {}).get('accuracy'))}"]
            for part in ("svd_located", "svd_true_layers", "reedit", "project", "finetune"):
                row = r.get(part)
                if row is None:
                    continue
                if "skipped" in row:
                    lines.append("| " + " | ".join(head + [part, row["skipped"], "—", "—", "—"]) + " |")
                    continue
                down = f"{f(r.get('downstream_edited'), 3)} → {f(row.get('downstream'), 3)}"
                lines.append("| " + " | ".join(head + [part, f"{row['reversed']}/{row['made_hold']}",
                                                      f(row["es_mean"]), down, f(row["seconds"], 0)]) + " |")
                head = ["", "", "", "", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("make-edits", "measure", "table"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--limit", type=int, default=10, help="downstream items per commonsense task (0: skip)")
    parser.add_argument("--budget-steps", type=int, default=50, help="fine-tuning steps of the finetune removal")
    parser.add_argument("--parts", nargs="+", default=["svd_located", "svd_true_layers", "reedit", "project",
                                                       "finetune"])
    args = parser.parse_args(argv)
    if args.what == "make-edits":
        make_edits(args)
    elif args.what == "measure":
        measure(args)
    else:
        print(table(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
