"""Compare edit-preserving fine-tuning strategies against plain fine-tuning, cell by cell, resumably.

For each fine-tuning type and strategy (none = plain fine-tuning) the edited model is fine-tuned with
``editdecay.finetune`` (``preserve_strategy``), then evaluated on the edit's records and a downstream sample;
survival is ``editdecay.evaluate.decay.compare`` between the edited model and the fine-tuned one. Extra
compute is the strategy's training time above plain fine-tuning's plus its work outside the loop (keys, the
re-edit), from the fine-tune manifest. Each finished cell is a JSON under ``OUT/cells``; a rerun skips them,
and ``--budget-min`` stops between cells so a job fits its turn on a shared machine (rerun to continue).

    nohup flock /tmp/editdecay-heavy.lock env OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/preserve_eval.py \\
        run --edit /work/shared-edits/smollm2-135m-memit-cf100 > /tmp/preserve_eval.log 2>&1 &
    .venv/bin/python scripts/preserve_eval.py table      # OUT/results.{csv,json,md}
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

OUT = Path("benchmarks/results/preserve")
STRATEGIES = ("none", "freeze", "nullspace", "replay", "reedit")
COLUMNS = ("type", "strategy", "n_ok_before", "es_before", "es_after", "efr_es", "survival_es", "ps_after",
           "efr_ps", "ns_after", "downstream", "downstream_delta_pts", "train_s", "extra_s", "notes")


def _write_json(path: Path, data) -> None:
    from editdecay.util.io import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)


def _evaluate(model_dir: Path, edit_dir: Path, args) -> dict:
    from editdecay.evaluate.api import evaluate_model

    return evaluate_model(str(model_dir), records=str(edit_dir / "manifest.json"), downstream=args.downstream,
                          limit=args.downstream_n, progress=False)


def _config(args, ft_type: str, strategy: str) -> dict:
    cfg = {"type": ft_type, "data": args.data, "max_steps": args.max_steps, "batch_size": args.batch_size,
           "max_length": args.max_length, "seed": args.seed, "preserve_strategy": strategy}
    if strategy == "replay":
        cfg["replay_rate"] = args.replay_rate
    lr = args.full_lr if ft_type == "full" else args.adapter_lr
    if lr is not None:
        cfg["lr"] = lr
    return cfg


def run(args) -> int:
    import torch

    from editdecay.evaluate.decay import compare
    from editdecay.finetune.api import finetune
    from editdecay.util.env import library_versions, machine_info

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    edit_dir, cells = Path(args.edit), args.out / "cells"
    edited_path = cells / "edited.json"
    if not edited_path.exists():
        _write_json(edited_path, _evaluate(edit_dir, edit_dir, args))
    edited = json.loads(edited_path.read_text())
    for ft_type in args.types:
        for strategy in args.strategies:
            path = cells / f"{ft_type}-{strategy}.json"
            if path.exists():
                continue
            if (time.perf_counter() - started) / 60 > args.budget_min:
                print(f"[preserve_eval] budget of {args.budget_min} min used; rerun to continue", flush=True)
                return 3
            print(f"[preserve_eval] {ft_type} / {strategy}", flush=True)
            t = time.perf_counter()
            ft_dir = args.work / f"{ft_type}-{strategy}"
            manifest = finetune(str(edit_dir), _config(args, ft_type, strategy), ft_dir,
                                preserve_edits=edit_dir if strategy != "none" else None, progress=False)
            ev = _evaluate(ft_dir, edit_dir, args)
            decay = compare(edited, ev, metrics=["efficacy", "paraphrase"])
            cell = {"type": ft_type, "strategy": strategy, "config": manifest["config"], "steps": manifest["steps"],
                    "train_seconds": manifest["timings"]["train_seconds"], "preserve": manifest.get("preserve"),
                    "summary": ev["summary"], "downstream": ev["downstream"], "decay": decay,
                    "cell_seconds": time.perf_counter() - t, "load_average": os.getloadavg(),
                    "machine": machine_info(), "versions": library_versions(), "edit": str(edit_dir)}
            _write_json(path, cell)
            if not args.keep_models:
                for weights in ft_dir.glob("*.safetensors"):
                    if weights.name.startswith("model"):
                        weights.unlink()
            print(f"[preserve_eval] {ft_type} / {strategy}: ES {ev['summary']['efficacy']:.3f}, EFR "
                  f"{decay['efr']['efficacy']}, downstream {ev['downstream']['mean']:.3f}, "
                  f"{cell['cell_seconds']:.0f}s", flush=True)
    table(args)
    return 0


def _notes(cell: dict) -> str:
    info = cell.get("preserve") or {}
    if cell["strategy"] == "nullspace" and "output_change" in info:
        return f"max ‖ΔW K‖/(‖ΔW‖‖K‖) {max(info['output_change'].values()):.1e}"
    if cell["strategy"] == "replay" and "n_replay" in info:
        return (f"{info['n_replay']} replay examples ({100 * info['replay_share']:.0f}% of the data, so that "
                f"share of the steps' examples is not corpus)")
    if cell["strategy"] == "reedit" and "reedit" in info:
        r = info["reedit"]
        return (f"held {r['held_before_ft']} -> {r['held_after_ft']} after FT -> {r['held_after_solve']} re-solved "
                f"-> {r['held_final']} ({r['reoptimised']} z re-optimised)")
    return ""


def rows(out: Path) -> list[dict]:
    cells = {p.stem: json.loads(p.read_text()) for p in sorted((out / "cells").glob("*-*.json"))}
    edited = json.loads((out / "cells" / "edited.json").read_text())
    result = []
    for cell in cells.values():
        plain = cells.get(f"{cell['type']}-none")
        info = cell.get("preserve") or {}
        # the strategy's own timed work (keys, per-step projection, re-edit): on a shared machine the training
        # time of two runs differs by more than that from load alone, so train_s is shown but not subtracted
        extra = info.get("extra_seconds") or 0.0
        down, down_plain = cell["downstream"]["mean"], plain["downstream"]["mean"] if plain else None
        d = cell["decay"]
        result.append({
            "type": cell["type"], "strategy": cell["strategy"],
            "n_ok_before": d["counts"]["efficacy"]["succeeded_before"],
            "es_before": edited["summary"]["efficacy"], "es_after": cell["summary"]["efficacy"],
            "efr_es": d["efr"]["efficacy"], "survival_es": d["survival"]["efficacy"]["rate"],
            "ps_after": cell["summary"].get("paraphrase"), "efr_ps": d["efr"].get("paraphrase"),
            "ns_after": cell["summary"].get("neighborhood"), "downstream": down,
            "downstream_delta_pts": None if down_plain is None else 100 * (down - down_plain),
            "train_s": cell["train_seconds"], "extra_s": extra, "notes": _notes(cell)})
    order = {s: i for i, s in enumerate(STRATEGIES)}
    return sorted(result, key=lambda r: (r["type"], order.get(r["strategy"], 99)))


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table(args) -> int:
    data = rows(args.out)
    if not data:
        print(f"no finished cells under {args.out / 'cells'}", file=sys.stderr)
        return 1
    with (args.out / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(data)
    _write_json(args.out / "results.json", data)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in data]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "table"))
    parser.add_argument("--edit", help="edit folder (run)")
    parser.add_argument("--types", default="lora,full", type=lambda s: s.split(","))
    parser.add_argument("--strategies", default=",".join(STRATEGIES), type=lambda s: s.split(","))
    parser.add_argument("--data", default="commonsense")
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replay-rate", type=float, default=0.1)
    parser.add_argument("--full-lr", type=float, help="full fine-tuning lr (default: FinetuneConfig's 5e-6)")
    parser.add_argument("--adapter-lr", type=float, help="LoRA/DoRA lr (default: FinetuneConfig's 2e-4)")
    parser.add_argument("--downstream", default="piqa,ARC-Easy")
    parser.add_argument("--downstream-n", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget-min", type=float, default=20.0, help="start no new cell after this many minutes")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("PRESERVE_WORK", "/tmp/preserve-runs")),
                        help="fine-tune folders (weights are deleted after evaluation unless --keep-models)")
    parser.add_argument("--keep-models", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "run":
        if not args.edit:
            parser.error("run needs --edit EDIT_DIR")
        return run(args)
    return table(args)


if __name__ == "__main__":
    sys.exit(main())
