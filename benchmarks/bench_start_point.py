"""What sharing the step-0 tracking point saves a grid: the seconds of one step-0 point, times the fine-tunes
that no longer score it.

Every tracked fine-tune scores its edits at step 0 on the model it starts from. LoRA and full fine-tuning
start from it bit for bit, so a grid's fine-tunes of one edited model share that point
(``finetune.api.start_point_file``); only the first computes it. This measures one step-0 point on SmolLM2
(``evaluate_edits`` over the first ``--n`` CounterFact records, ``--repeat`` times, median) and counts, in a grid's
plan, the tracked LoRA/full fine-tunes without a preserve strategy per input model: each beyond the first is one
point saved.

    .venv/bin/python benchmarks/bench_start_point.py --grid configs/cpu-study.yaml --n 100 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "bench_start_point.json"


def shared_points(grid: str) -> tuple[int, int, dict[str, int]]:
    """(tracked fine-tunes, of which share a start point with an earlier one, fine-tunes per input model)."""
    from editdecay.experiment.runner import plan_grid
    from editdecay.finetune.api import EXACT_AT_START

    plan = plan_grid(grid)
    per_input: Counter[str] = Counter()
    tracked = 0
    for spec in plan.stages.values():
        if spec.kind != "finetune" or not spec.config.get("track_edits"):
            continue
        tracked += 1
        ft = spec.config["finetune"]
        if ft.get("type") in EXACT_AT_START and ft.get("preserve_strategy", "none") == "none":
            per_input[spec.deps["model"]] += 1
    return tracked, sum(n - 1 for n in per_input.values()), dict(per_input)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default=str(ROOT / "configs" / "cpu-study.yaml"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=100, help="tracked records (the grid's n_edits)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from editdecay.data.records import load_edit_records
    from editdecay.evaluate.api import evaluate_edits
    from editdecay.models.registry import load_model
    from editdecay.util.env import library_versions, machine_info
    from editdecay.util.io import atomic_write_json

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    model.eval()
    records = load_edit_records("counterfact", n=args.n)
    seconds = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        with torch.no_grad():
            evaluate_edits(model, tok, records)
        seconds.append(time.perf_counter() - t)
    point = statistics.median(seconds)
    tracked, saved, per_input = shared_points(args.grid)
    out = {"grid": str(Path(args.grid).resolve().relative_to(ROOT)), "model": args.model, "n": args.n,
           "threads": args.threads, "step0_seconds": seconds, "step0_seconds_median": point,
           "tracked_finetunes": tracked, "step0_points_saved": saved,
           "finetunes_per_input": sorted(per_input.values(), reverse=True),
           "seconds_saved_estimate": saved * point, "machine": machine_info(), "versions": library_versions()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT, out)
    print({k: v for k, v in out.items() if k not in ("versions",)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
