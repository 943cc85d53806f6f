"""Measure `editdecay erase` on real SmolLM2 edits (1, 10, 100 CounterFact edits; MEMIT and AlphaEdit).

    # 1. make the edit folders (shared, reused by others): /work/shared-edits/smollm2-135m-<method>-cf<N>
    nohup flock /tmp/editdecay-heavy.lock env OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python \
        scripts/erase_eval.py make-edits > /tmp/erase_eval.log 2>&1 &
    # 2. measure location / tracing / reversal / removal on each (resumable: one JSON per case)
    nohup flock /tmp/editdecay-heavy.lock env OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python \
        scripts/erase_eval.py measure > /tmp/erase_eval.log 2>&1 &
    # 3. the upper bound of object tracing: can what ΔW writes for each true subject be read anywhere?
    env OMP_NUM_THREADS=1 .venv/bin/python scripts/erase_eval.py trace-bound --methods memit --sizes 1 10

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


PLACEHOLDERS = ("Someone", "He", "The person", "X")
BOUND_GENERATION_PROMPTS = ("The", "This is a", "x is",
                            "Syria: country in the Middle East. Leonardo DiCaprio: American actor. Samsung: South "
                            "Korean company. x")


def trace_bound(method: str, n: int, steps: int = 15) -> dict:
    """The upper bound of object tracing on one edit folder (writes ``<method>-cf<n>-trace-bound.json``).

    For each record, w_l = ΔW_l k_l is what the update writes at layer l for the true subject's key (its last
    token in the record's prompt) - more than any tracer has, which sees only ΔW's singular directions. The
    rank of target_new's first token is read with w inserted (added to the MLP outputs of the edited layers):
    ``at_subject`` into the base model at the true subject (the edit itself: rank 0 when w is the edit);
    ``placeholder`` at a placeholder subject of the record's relation prompt (needs the relation: the setting of
    the paper's first version), with ``placeholder_control`` the same prompt unchanged; ``prompt_free`` at the
    last position of the tracer's neutral prompts, and ``generation`` whether greedy continuations of
    prompt-free prompts with w inserted contain target_new. ``svd_placeholder``: ΔW's singular directions
    (both signs, at 1 and 3 times the layer's median ‖w_l‖) at a placeholder of each record's relation prompt.
    """
    import statistics

    import torch

    from editdecay import api
    from editdecay.erase import locate, reverse, trace
    from editdecay.evaluate.api import load_records_arg
    from editdecay.util.io import atomic_write_json

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    folder = edit_dir(method, n)
    edited, tok = api.load_model(folder)
    base, _ = api.load_model(MODEL)
    adapter = api.get_adapter(edited)
    records = load_records_arg(folder / "manifest.json")
    changes = [c for c in locate.diff_changes(edited, base, adapter) if c.is_rewrite]
    ours, theirs = dict(edited.named_parameters()), dict(base.named_parameters())
    deltas = {c.layer: adapter.as_out_in(ours[c.name].detach().double() - theirs[c.name].detach().double())
              for c in changes}
    layers = sorted(deltas)

    def encode(text: str) -> torch.Tensor:
        return tok(text, return_tensors="pt")["input_ids"]

    def with_subject(record, subject: str) -> tuple[torch.Tensor, int]:
        before = record.prompt.split("{}")[0]
        return encode(record.prompt.format(subject)), encode(before + subject).shape[1] - 1

    def greedy(ids: torch.Tensor, adds) -> str:
        x = ids
        with trace.added_to_rewrite_output(edited, adapter, adds), torch.no_grad():
            for _ in range(steps):
                x = torch.cat([x, edited(input_ids=x).logits[0, -1].argmax().view(1, 1)], 1)
        return tok.decode(x[0, ids.shape[1]:])

    rows, writes = [], []
    for r in records:
        target = trace.first_token(tok, r.target_new)
        ids, pos = with_subject(r, r.subject)
        keys = trace.rewrite_inputs(edited, adapter, ids, pos, layers)
        w = {layer: (deltas[layer] @ keys[layer]).float() for layer in layers}
        writes.append(w)
        at = lambda p, w=w: {layer: (p, w[layer]) for layer in layers}  # noqa: E731
        control, placeholder = [], []
        for ph in PLACEHOLDERS:
            pid, ppos = with_subject(r, ph)
            control.append(trace.next_token_ranks(edited, adapter, pid, [target])[0])
            placeholder.append(trace.next_token_ranks(edited, adapter, pid, [target], at(ppos))[0])
        free = [trace.next_token_ranks(edited, adapter, encode(q), [target], at(encode(q).shape[1] - 1))[0]
                for q in trace.NEUTRAL_PROMPTS]
        texts = [greedy(encode(q), at(encode(q).shape[1] - 1)) for q in BOUND_GENERATION_PROMPTS]
        rows.append({
            "case_id": r.case_id, "subject": r.subject, "target_new": r.target_new,
            "write_norms": {layer: round(float(v.norm()), 3) for layer, v in w.items()},
            "base": trace.next_token_ranks(base, adapter, ids, [target])[0],
            "edited": trace.next_token_ranks(edited, adapter, ids, [target])[0],
            "at_subject": trace.next_token_ranks(base, adapter, ids, [target], at(pos))[0],
            "placeholder_control": min(control), "placeholder": min(placeholder), "prompt_free": min(free),
            "generation_hits": sum(r.target_new.lower() in t.lower() for t in texts), "generations": texts,
        })
        print(f"[{method} cf{n}] {json.dumps({k: v for k, v in rows[-1].items() if k != 'generations'})}", flush=True)
    scale = {layer: statistics.median(float(w[layer].norm()) for w in writes) for layer in layers}
    svd = [None] * len(records)
    for layer in layers:
        u, _, _ = reverse.top_components(deltas[layer], len(records))
        for i in range(u.shape[1]):
            for sign, mult in ((1.0, 1.0), (-1.0, 1.0), (1.0, 3.0), (-1.0, 3.0)):
                vec = (sign * mult * scale[layer] * u[:, i]).float()
                for j, r in enumerate(records):
                    for ph in PLACEHOLDERS[:2]:
                        pid, ppos = with_subject(r, ph)
                        got = trace.next_token_ranks(edited, adapter, pid, [trace.first_token(tok, r.target_new)],
                                                     {layer: (ppos, vec)})[0]
                        svd[j] = got if svd[j] is None else min(svd[j], got)
    for row, best in zip(rows, svd, strict=True):
        row["svd_placeholder"] = best

    def top(key: str, k: int) -> int:
        return sum(row[key] < k for row in rows)

    summary = {key: {"top1": top(key, 1), "top5": top(key, 5), "median_rank": statistics.median(r[key] for r in rows)}
               for key in ("edited", "at_subject", "placeholder_control", "placeholder", "prompt_free",
                           "svd_placeholder")}
    summary["generation"] = {"records_hit": sum(r["generation_hits"] > 0 for r in rows),
                             "prompts": list(BOUND_GENERATION_PROMPTS), "steps": steps}
    res = {"method": method, "n_edits": n, "edit_folder": str(folder), "layers": layers, "n_records": len(rows),
           "placeholders": list(PLACEHOLDERS), "neutral_prompts": list(trace.NEUTRAL_PROMPTS), "summary": summary,
           "records": rows, "seconds": time.perf_counter() - t0, "load_avg": os.getloadavg()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / f"{method}-cf{n}-trace-bound.json", res)
    print(f"[{method} cf{n}] summary: {json.dumps(summary)}", flush=True)
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
    parser.add_argument("what", choices=("make-edits", "measure", "trace-bound", "table"))
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
    elif args.what == "trace-bound":
        for method in args.methods:
            for n in args.sizes:
                if (edit_dir(method, n) / "manifest.json").exists():
                    trace_bound(method, n)
    else:
        print(table(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
