"""One fixed grid run by an earlier version of editdecay and by this one: wall time, work-folder disk, metrics.

    git worktree add /tmp/editdecay-before 800b55e        # the version before deltas-only stages
    git worktree add /tmp/editdecay-after HEAD
    flock /tmp/editdecay-heavy.lock .venv/bin/python benchmarks/bench_grid.py --before /tmp/editdecay-before \
        --after /tmp/editdecay-after

Both runs execute ``configs/demo-v1.yaml`` (the 10-edit MEMIT + 12-step LoRA demo) from scratch in fresh work
folders, one after the other in this process's machine state, as ``python -m editdecay.cli run`` subprocesses
(``PYTHONPATH`` picks the version). This version runs it with ``train_on_inputs: false`` added, the loss the
earlier version used, so both compute the same thing. Reported: wall seconds of each run and their ratio, the
work folder's size after each run, and the largest difference between the two stores' metrics (summary and
per record, matched by run settings and group). Results: ``benchmarks/results/bench_grid.json``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

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


def run(src: Path, grid: Path, tmp: Path, name: str) -> dict:
    store, work = tmp / f"{name}.db", tmp / f"{name}-work"
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "editdecay.cli", "run", str(grid), "--store", str(store),
                           "--workdir", str(work)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{name} run failed:\n{done.stderr[-3000:]}")
    return {"seconds": seconds, "work_bytes": folder_bytes(work), "store": store}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="a checkout of the earlier version (its src/ is used)")
    ap.add_argument("--after", default=str(ROOT), help="a checkout of this version (default: this one)")
    args = ap.parse_args()
    raw = yaml.safe_load(GRID.read_text())
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        after_grid = tmp / "demo-v1-after.yaml"
        raw_after = {**raw, "finetune": {**raw["finetune"], "train_on_inputs": False}}
        after_grid.write_text(yaml.safe_dump(raw_after))
        before = run(Path(args.before) / "src", GRID, tmp, "before")
        after = run(Path(args.after) / "src", after_grid, tmp, "after")
        mb, ma = metrics(before.pop("store")), metrics(after.pop("store"))
    shared = sorted(set(mb) & set(ma))
    diffs = [abs(mb[k] - ma[k]) for k in shared]
    out = {"grid": str(GRID.relative_to(ROOT)), "before": before, "after": after,
           "wall_ratio_after_over_before": after["seconds"] / before["seconds"],
           "disk_ratio_after_over_before": after["work_bytes"] / before["work_bytes"],
           "metrics_compared": len(shared), "metrics_only_before": len(set(mb) - set(ma)),
           "metrics_only_after": len(set(ma) - set(mb)), "max_abs_metric_difference": max(diffs) if diffs else None,
           "cpus": os.cpu_count(), "loadavg_after": os.getloadavg()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    import json

    OUT.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
