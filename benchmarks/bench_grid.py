"""One fixed grid run by an earlier version of editdecay and by this one: wall time, work-folder disk, metrics.

    git worktree add /tmp/editdecay-before 800b55e        # the version before deltas-only stages
    git worktree add /tmp/editdecay-after HEAD
    flock /tmp/editdecay-heavy.lock .venv/bin/python benchmarks/bench_grid.py --before /tmp/editdecay-before \
        --after /tmp/editdecay-after --repeat 2 --note "..."

Each pair runs ``configs/demo-v1.yaml`` (the 10-edit MEMIT + 12-step LoRA demo) three times, from scratch in
fresh work folders, one after the other in this process's machine state, as ``python -m editdecay.cli run``
subprocesses (``PYTHONPATH`` picks the version): the earlier version and this one with their default ``editdecay
run`` options (the earlier version: one stage at a time in its process; this one: ``--workers auto``, stages
packed onto the cores by their declared ``num_cpus``), and this one with ``--workers 1``. This version runs it
with ``train_on_inputs: false`` added, the loss the earlier version used, so all compute the same thing.
Reported: wall seconds of each run and the ratios, the work folder's size after each run (and per stage kind),
each kind's summed stage seconds, and the largest difference between the stores' metrics (summary and per
record, matched by run settings and group); ``--repeat N`` runs N pairs and reports medians and pairwise ratios.
Results: ``benchmarks/results/bench_grid.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from editdecay.util.env import machine_info

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "configs" / "demo-v1.yaml"
OUT = ROOT / "benchmarks" / "results" / "bench_grid.json"


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def metrics(store: Path) -> dict[tuple, float]:
    con = sqlite3.connect(store)
    rows = con.execute(
        "SELECT r.method, r.ft_type, g.grp, '', m.metric, m.value FROM runs r JOIN run_groups g USING (run_id) "
        "JOIN metrics m ON m.eval_stage_id = g.eval_stage_id UNION ALL "
        "SELECT r.method, r.ft_type, g.grp, rm.case_id, rm.metric, rm.value FROM runs r JOIN run_groups g "
        "USING (run_id) JOIN record_metrics rm ON rm.eval_stage_id = g.eval_stage_id").fetchall()
    con.close()
    return {tuple(r[:5]): r[5] for r in rows}


def kind_seconds(store: Path) -> dict[str, float]:
    """Wall seconds per stage kind, summed over the run's stages (as each runner recorded them)."""
    con = sqlite3.connect(store)
    rows = con.execute("SELECT kind, SUM(seconds) FROM stages GROUP BY kind").fetchall()
    con.close()
    return {kind: round(sec or 0.0, 1) for kind, sec in rows}


def kind_bytes(work: Path) -> dict[str, int]:
    """Bytes of the work folder per stage kind (``stages/<kind>/``) and the rest (target values, logs)."""
    out: dict[str, int] = {}
    for f in work.rglob("*"):
        if f.is_file():
            rel = f.relative_to(work).parts
            key = rel[1] if len(rel) > 2 and rel[0] == "stages" else rel[0]
            out[key] = out.get(key, 0) + f.stat().st_size
    return dict(sorted(out.items()))


def run(src: Path, grid: Path, tmp: Path, name: str, extra: tuple[str, ...] = ()) -> dict:
    store, work = tmp / f"{name}.db", tmp / f"{name}-work"
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "editdecay.cli", "run", str(grid), "--store", str(store),
                           "--workdir", str(work), *extra], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{name} run failed:\n{done.stderr[-3000:]}")
    return {"seconds": seconds, "work_bytes": folder_bytes(work), "work_bytes_by_kind": kind_bytes(work),
            "stage_seconds_by_kind": kind_seconds(store), "store": store}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="a checkout of the earlier version (its src/ is used)")
    ap.add_argument("--after", default=str(ROOT), help="a checkout of this version (default: this one)")
    ap.add_argument("--repeat", type=int, default=1, help="pairs to run, interleaved before/after (default 1)")
    ap.add_argument("--note", default="", help="machine state to record (e.g. 'other jobs stopped')")
    args = ap.parse_args()
    raw = yaml.safe_load(GRID.read_text())
    pairs = []
    metric_diffs: list[float] = []
    compared = only_before = only_after = 0
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            after_grid = tmp / "demo-v1-after.yaml"
            raw_after = {**raw, "finetune": {**raw["finetune"], "train_on_inputs": False}}
            after_grid.write_text(yaml.safe_dump(raw_after))
            before = run(Path(args.before) / "src", GRID, tmp, "before")
            after = run(Path(args.after) / "src", after_grid, tmp, "after")
            serial = run(Path(args.after) / "src", after_grid, tmp, "after-1", ("--workers", "1"))
            mb, ma, ms = (metrics(r.pop("store")) for r in (before, after, serial))
        shared = sorted(set(mb) & set(ma) & set(ms))
        metric_diffs += [max(abs(mb[k] - ma[k]), abs(mb[k] - ms[k])) for k in shared]
        compared, only_before, only_after = len(shared), len(set(mb) - set(ma)), len(set(ma) - set(mb))
        pairs.append({"before": before, "after": after, "after_one_worker": serial,
                      "wall_ratio": after["seconds"] / before["seconds"],
                      "wall_ratio_one_worker": serial["seconds"] / before["seconds"]})
        print(f"pair {i + 1}: before {before['seconds']:.0f} s, after {after['seconds']:.0f} s "
              f"(one worker: {serial['seconds']:.0f} s), ratio {pairs[-1]['wall_ratio']:.3f} "
              f"({pairs[-1]['wall_ratio_one_worker']:.3f})", file=sys.stderr)
    b, a = pairs[-1]["before"], pairs[-1]["after"]
    out = {"grid": str(GRID.relative_to(ROOT)), "pairs": pairs,
           "before_seconds_median": statistics.median(p["before"]["seconds"] for p in pairs),
           "after_seconds_median": statistics.median(p["after"]["seconds"] for p in pairs),
           "after_one_worker_seconds_median": statistics.median(p["after_one_worker"]["seconds"] for p in pairs),
           "wall_ratio_median": statistics.median(p["wall_ratio"] for p in pairs),
           "wall_ratio_one_worker_median": statistics.median(p["wall_ratio_one_worker"] for p in pairs),
           "before_work_bytes": b["work_bytes"], "after_work_bytes": a["work_bytes"],
           "disk_ratio_after_over_before": a["work_bytes"] / b["work_bytes"],
           "metrics_compared": compared, "metrics_only_before": only_before, "metrics_only_after": only_after,
           "max_abs_metric_difference": max(metric_diffs) if metric_diffs else None,
           "machine": machine_info(), "note": args.note, "loadavg_after": os.getloadavg()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
