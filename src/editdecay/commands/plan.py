"""`editdecay plan GRID.yaml`: validate a grid and show its runs, the stages they share, and estimates of work,
peak memory and disk per stage kind, checked against the declared resources and this machine."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="validate a grid file; print its runs, shared stages and estimates of work, "
                       "memory and disk (exit 1 when a stage would not fit: editdecay run refuses it)")
    p.add_argument("grid", help="grid YAML file (see configs/)")
    p.add_argument("--runs", type=int, default=50, help="print at most this many runs (default 50; 0: all)")
    p.add_argument("--no-machine-check", action="store_true",
                   help="check memory only against the grid's resources, not this machine (planning for a cluster)")
    p.add_argument("--costs", action="store_true", help="also print the parts of each stage kind's largest estimate")
    p.add_argument("--costs-from", metavar="STORE",
                   help="estimate time from the CPU seconds measured in a results store (a pilot or an earlier grid "
                   "on this machine): each stage at its like stages' median, else its kind's, else the constants")
    p.set_defaults(handler=run)


def _fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _fmt_bytes(b: float) -> str:
    if b < 1e6:
        return f"{b / 1024:.0f} KB"
    if b < 1024 ** 3:
        return f"{b / 1024 ** 2:.0f} MB"
    return f"{b / 1024 ** 3:.1f} GB"


def run(args: argparse.Namespace) -> int:
    from editdecay.api import (
        MeasuredCosts,
        by_kind,
        check_plan_resources,
        estimate_plan,
        estimate_seconds,
        measured_plan_seconds,
        plan_grid,
        stage_dtype,
    )

    plan = plan_grid(args.grid)
    grid = plan.grid
    print(f"grid {grid.name} ({grid.path}): {len(plan.runs)} run(s)")
    header = f"{'run':<22} {'model':<16} {'method':<9} {'edit_data':<12} {'n':>5} {'ft':<5} {'layers':<10} " \
             f"{'modules':<9} {'ft_data':<12} {'seed':>4}"
    print(header)
    shown = plan.runs if args.runs == 0 else plan.runs[: args.runs]
    for r in shown:
        row = r.row({})
        print(f"{r.run_id:<22} {row['model']:<16.16} {row['method']:<9} {row['edit_data']:<12.12} {row['n_edits']:>5} "
              f"{row['ft_type']:<5} {row['layers']:<10.10} {row['modules']:<9.9} {row['ft_data']:<12.12} {row['seed']:>4}")
    if len(shown) < len(plan.runs):
        print(f"... and {len(plan.runs) - len(shown)} more (--runs 0 shows all)")
    naive = sum(len(set(r.stages.values())) for r in plan.runs)
    print(f"\nstages: {len(plan.stages)} distinct ({naive} without sharing); {plan.shared} shared by 2+ runs")
    sources = None
    if args.costs_from:
        est, sources = measured_plan_seconds(plan, MeasuredCosts.from_store(args.costs_from))
    else:
        est = estimate_seconds(plan)
    costs = estimate_plan(plan)
    kinds = by_kind(costs)
    print(f"{'kind':<10} {'stages':>6} {'shared':>6} {'est. time':>10} {'peak memory':>12} {'disk':>10}  dtype")
    order = ["base", "stats", "targets", "edit", "finetune", "evaluate"]
    for kind in order + sorted({spec.kind for spec in plan.stages.values()} - set(order)):
        ids = [s for s, spec in plan.stages.items() if spec.kind == kind]
        if ids:
            shared = sum(1 for s in ids if plan.stage_uses[s] > 1)
            k = kinds[kind]
            dtypes = sorted({stage_dtype(plan.stages[s], grid) for s in ids})
            print(f"{kind:<10} {len(ids):>6} {shared:>6} {_fmt_seconds(est.get(kind, 0.0)):>10} "
                  f"{_fmt_bytes(k['peak']):>12} {_fmt_bytes(k['disk']):>10}  {','.join(dtypes)}")
    if sources is None:
        print(f"estimated work: {_fmt_seconds(sum(est.values()))} on a 2-core CPU (rough: per-stage cost constants "
              "scaled by model size; --costs-from STORE estimates from measured stages)")
    else:
        print(f"estimated work: {_fmt_seconds(sum(est.values()))} of stage CPU time measured in {args.costs_from}: "
              f"{sources['like']} stage(s) at the median of like stages (same kind, model, number of edits, "
              f"fine-tuning type, steps and preserve strategy), {sources['kind']} at their kind's, "
              f"{sources['constants']} from the constants; divide by the workers for wall time on free cores")
    print(f"estimated disk: {_fmt_bytes(sum(c.disk for c in costs))} in all; peak memory is the largest stage of "
          "each kind (upper-bound sums: editdecay.experiment.cost)")
    notes = sorted({n for c in costs for n in c.notes})
    for note in notes:
        print(f"note: {note}")
    if args.costs:
        for kind, k in kinds.items():
            worst = k["worst"]
            print(f"\n{kind} (largest: {worst.stage_id}, {worst.model}):")
            for part, value in worst.parts.items():
                print(f"  {part:<40} {_fmt_bytes(value):>10}")
    problems = check_plan_resources(plan, workdir=grid.workdir, check_machine=not args.no_machine_check, costs=costs)
    if problems:
        print(f"\n{len(problems)} problem(s): editdecay run refuses this grid until they are fixed")
        for p in problems:
            print(f"  {p}")
        return 1
    return 0
