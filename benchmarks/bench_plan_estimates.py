"""Benchmark: how well `editdecay plan` foresees a grid's CPU time, from its constants and from a pilot's store.

A pilot is simulated inside a finished store: the stages of the runs with seed 0 (what a pilot grid with one seed
would have measured) give the measured costs; the stages only the other seeds use are held out. For the held-out
stages with CPU seconds recorded, the table compares the sum of their measured CPU seconds with the estimate of
`plan --costs-from` (like stages' medians from the pilot) and with the plan's constants, per stage kind.

    .venv/bin/python benchmarks/bench_plan_estimates.py configs/cpu-study.yaml docs/results/cpu-study.db
"""

from __future__ import annotations

import argparse
from pathlib import Path

from editdecay.experiment.cost import planned_stage_seconds
from editdecay.experiment.measured import MeasuredCosts, planned_costs
from editdecay.experiment.runner import plan_grid
from editdecay.experiment.store import Store
from editdecay.util.env import machine_info
from editdecay.util.io import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grid")
    ap.add_argument("store")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_plan_estimates.json"))
    args = ap.parse_args()
    plan = plan_grid(args.grid)
    with Store(args.store) as db:
        measured = {c["stage_id"]: c for c in db.stage_costs()}
    pilot = {sid for run in plan.runs if run.values["seed"] == 0 for sid in run.stages.values()}
    from_pilot = MeasuredCosts([c for sid, c in measured.items() if sid in pilot])
    rows: dict[str, dict[str, float]] = {}
    for row in planned_costs(plan):
        sid = row["stage_id"]
        got = measured.get(sid, {}).get("cpu_seconds")
        if sid in pilot or got is None:
            continue
        estimate = from_pilot.estimate(row)
        r = rows.setdefault(row["kind"], {"stages": 0, "measured": 0.0, "pilot": 0.0, "constants": 0.0,
                                          "like": 0})
        r["stages"] += 1
        r["measured"] += got
        r["pilot"] += estimate[0] if estimate else planned_stage_seconds(plan, sid)
        r["like"] += bool(estimate and estimate[1] == "like")
        r["constants"] += planned_stage_seconds(plan, sid)
    total = {k: sum(r[k] for r in rows.values()) for k in ("stages", "measured", "pilot", "constants", "like")}
    print(f"held-out stages (used only by runs with seed != 0), pilot = the {len(pilot)} stages of seed-0 runs")
    print(f"{'kind':<10} {'stages':>6} {'like':>5} {'measured CPU s':>15} {'pilot est.':>11} {'ratio':>6} "
          f"{'constants':>10} {'ratio':>6}")
    for kind, r in sorted(rows.items()) + [("total", total)]:
        print(f"{kind:<10} {r['stages']:>6.0f} {r['like']:>5.0f} {r['measured']:>15.0f} {r['pilot']:>11.0f} "
              f"{r['pilot'] / r['measured']:>6.2f} {r['constants']:>10.0f} {r['constants'] / r['measured']:>6.2f}")
    atomic_write_json(args.out, {"command": f"benchmarks/bench_plan_estimates.py {args.grid} {args.store}",
                                 "machine_of_this_run": machine_info(), "pilot_stages": len(pilot),
                                 "held_out": rows, "total": total})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
