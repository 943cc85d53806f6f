"""Benchmark: evaluating an edited model's fine-tune with its last tracked scores taken vs scored again.

For every tracked fine-tune folder of a grid's work folder (``edit_scores.json`` beside ``trajectory.json``), the
evaluation a grid runs on it (the run's records, plus the downstream sample of ``--downstream`` / ``--limit``)
is timed both ways, alternating within each repeat so both see the same machine load; the table quotes the
median whole-evaluation seconds of each way, their ratio, and checks that the per-record rows agree. Run it on
the demo's work folder after `make demo`:

    nice -n 10 .venv/bin/python benchmarks/bench_kept_scores.py demo-out/work --downstream boolq,winogrande --limit 40
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from editdecay.artifacts import EDIT_SCORES, read_finetune_manifest, weights_dropped
from editdecay.evaluate.api import evaluate_model, load_records_arg
from editdecay.util.env import library_versions, machine_info
from editdecay.util.io import atomic_write_json


def _same_rows(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x[k], y[k], rel_tol=1e-4, abs_tol=1e-5) if isinstance(x[k], float) else x[k] == y[k]
        for x, y in zip(a, b, strict=True) for k in x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path, help="a grid's work folder (e.g. demo-out/work)")
    ap.add_argument("--downstream", help="downstream tasks the grid's evaluations score (comma-separated)")
    ap.add_argument("--limit", type=int, help="downstream items per task")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_kept_scores.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folders = sorted(p.parent for p in (args.workdir / "stages" / "finetune").glob(f"*/{EDIT_SCORES}"))
    dropped = [f for f in folders if weights_dropped(f)]  # a grid drops full fine-tunes' weights once evaluated
    folders = [f for f in folders if f not in dropped]
    if dropped:
        print(f"skipped {len(dropped)} full fine-tune folder(s) whose weights the grid dropped ('keep: [finetune]' "
              "in the grid keeps them)")
    if not folders:
        raise SystemExit(f"no fine-tune folder under {args.workdir}/stages/finetune keeps {EDIT_SCORES} and weights")
    rows = []
    for folder in folders:
        records = load_records_arg(read_finetune_manifest(folder)["edit_manifest"])
        seconds: dict[str, list[float]] = {"kept": [], "rescored": []}
        edits_s: dict[str, list[float]] = {"kept": [], "rescored": []}
        results = {}
        for _ in range(args.repeats):
            for way in ("kept", "rescored"):
                start = time.perf_counter()
                results[way] = evaluate_model(str(folder), records=records, downstream=args.downstream,
                                              limit=args.limit, progress=False, reuse_scores=way == "kept")
                seconds[way].append(time.perf_counter() - start)
                edits_s[way].append(results[way]["timings"]["edits_s"])
        assert "edit_scores_from" in results["kept"] and "edit_scores_from" not in results["rescored"]
        row = {"folder": folder.name, "records": len(records), "ft_type": read_finetune_manifest(folder)["type"],
               "same_rows": _same_rows(results["kept"]["records"], results["rescored"]["records"])}
        for way in seconds:
            row[f"{way}_s"] = statistics.median(seconds[way])
            row[f"{way}_edits_s"] = statistics.median(edits_s[way])
        row["ratio"] = row["kept_s"] / row["rescored_s"]
        rows.append(row)
        print(f"{folder.name} {row['ft_type']:<5} {len(records):>5} records: kept {row['kept_s']:.1f} s, "
              f"rescored {row['rescored_s']:.1f} s (edit scoring {row['rescored_edits_s']:.1f} s), ratio "
              f"{row['ratio']:.2f}, rows agree: {row['same_rows']}")
    atomic_write_json(args.out, {"command": "benchmarks/bench_kept_scores.py", "args": {k: str(v) for k, v in
                                                                                     vars(args).items()},
                                 "machine": machine_info(), "versions": library_versions(), "folders": rows,
                                 "skipped_dropped_weights": [f.name for f in dropped],
                                 "median_ratio": statistics.median(r["ratio"] for r in rows)})
    print(f"median ratio kept / rescored: {statistics.median(r['ratio'] for r in rows):.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
