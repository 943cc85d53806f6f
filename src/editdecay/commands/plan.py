"""`editdecay plan GRID.yaml`: validate a grid and show its runs, the stages they share, and a work estimate."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="validate a grid file; print its runs, shared stages and a work estimate")
    p.add_argument("grid", help="grid YAML file (see configs/)")
    p.add_argument("--runs", type=int, default=50, help="print at most this many runs (default 50; 0: all)")
    p.set_defaults(handler=run)


def _fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def run(args: argparse.Namespace) -> int:
    from editdecay.experiment.runner import plan_grid

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
    est = plan.estimate_seconds()
    print(f"{'kind':<10} {'stages':>6} {'shared':>6} {'est. time':>10}")
    for kind in ("base", "stats", "edit", "finetune", "evaluate"):
        ids = [s for s, spec in plan.stages.items() if spec.kind == kind]
        if ids:
            shared = sum(1 for s in ids if plan.stage_uses[s] > 1)
            print(f"{kind:<10} {len(ids):>6} {shared:>6} {_fmt_seconds(est.get(kind, 0.0)):>10}")
    print(f"estimated work: {_fmt_seconds(sum(est.values()))} on a 2-core CPU (rough: per-stage cost constants "
          "scaled by model size)")
    return 0
