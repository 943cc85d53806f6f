"""Benchmark of the experiment machinery (not the stages it runs): planning, store ingest, resume cost.

    .venv/bin/python benchmarks/bench_experiment.py [--repeats 5]

- plan: load + validate + expand configs/paper.yaml (640 distinct stages from 216 runs).
- ingest: one evaluation of 1,000 records (6 metrics each) + 7 downstream tasks into the store, one transaction.
- resume: re-running a finished tiny grid (every stage found done: registration + status checks only).
- tiny run: the whole tiny grid from scratch once (wall time vs the stages' own compute time).
Prints a table of medians and writes benchmarks/results/bench_experiment.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from editdecay.util.env import library_versions, machine_info
from editdecay.util.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from editdecay.experiment.plan import expand
    from editdecay.experiment.runner import run_grid
    from editdecay.experiment.schema import load_grid
    from editdecay.experiment.store import Store

    rows: dict[str, dict] = {}
    plan_times = timed(lambda: expand(load_grid(ROOT / "configs" / "paper.yaml")), args.repeats)
    plan = expand(load_grid(ROOT / "configs" / "paper.yaml"))
    rows["plan paper.yaml"] = {"median_s": statistics.median(plan_times), "runs": len(plan.runs),
                               "stages": len(plan.stages)}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        evaluation = {
            "summary": {"efficacy": 0.5, "paraphrase": 0.4, "neighborhood": 0.8, "n_records": 1000},
            "records": [{"case_id": str(i), "efficacy": (i % 2) * 1.0, "paraphrase": (i % 3) / 2,
                         "neighborhood": 1.0, "efficacy_magnitude": i / 1000, "paraphrase_magnitude": i / 2000,
                         "neighborhood_magnitude": i / 3000} for i in range(1000)],
            "downstream": {"tasks": {f"task{i}": 0.5 for i in range(7)}, "mean": 0.5, "n": {f"task{i}": 100
                                                                                              for i in range(7)}},
        }
        with Store(tmp / "bench.db") as db:
            counter = iter(range(10**6))

            def ingest() -> None:
                sid = f"evaluate-{next(counter)}"
                db.register_plan("bench", [], [{"stage_id": sid, "kind": "evaluate", "config": {}, "deps": {},
                                                "artifact": str(tmp)}], [])
                db.mark_done(sid, "evaluate", tmp, 1.0, {}, evaluation=evaluation)

            ingest_times = timed(ingest, args.repeats)
        rows["ingest 1k-record evaluation"] = {"median_s": statistics.median(ingest_times), "rows": 6 * 1000 + 7}

        tiny = ROOT / "configs" / "tiny.yaml"
        start = time.perf_counter()
        first = run_grid(tiny, tmp / "tiny.db", workdir=tmp / "work", progress=False)
        first_wall = time.perf_counter() - start
        with Store(tmp / "tiny.db") as db:
            compute = db.summary()["seconds_done"]
        resume_times = timed(lambda: run_grid(tiny, tmp / "tiny.db", workdir=tmp / "work", progress=False),
                             args.repeats)
        rows["resume finished tiny grid"] = {"median_s": statistics.median(resume_times), "stages": 19}
        rows["tiny grid from scratch"] = {"median_s": first_wall, "stage_compute_s": compute,
                                          "runs": sum(first.runs.values()), "repeats": 1}

    print(f"{'benchmark':<30} {'median s':>9}  details")
    for name, row in rows.items():
        details = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                            if k != "median_s")
        print(f"{name:<30} {row['median_s']:>9.3f}  {details}")
    out = ROOT / "benchmarks" / "results" / "bench_experiment.json"
    atomic_write_json(out, {"benchmarks": rows, "repeats": args.repeats, "versions": library_versions(),
                            "machine": machine_info()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
