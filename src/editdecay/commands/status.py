"""`editdecay status --store results.db`: progress of runs and stages, failures with their errors."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show runs and stages by status, and failed stages' errors")
    p.add_argument("--store", required=True, help="SQLite results file")
    p.add_argument("--check", action="store_true", help="also run the store's integrity check")
    p.add_argument("--export", metavar="DIR", help="export every table to DIR as CSV (or --format parquet)")
    p.add_argument("--format", choices=["csv", "parquet"], default="csv")
    p.add_argument("--snapshot", metavar="FILE", help="write a consistent one-file copy of the store to FILE (safe "
                   "while a run writes to it; what to commit of a study that is still running)")
    p.set_defaults(handler=run)


def remaining_cpu_seconds(summary: dict, costs: list[dict] | None = None) -> tuple[float, list[str]] | None:
    """(CPU seconds the stages not yet done will take, "N kind" of those with nothing to go by) or None when
    nothing is left. Each such stage counts the median CPU seconds of the done stages like it (same kind, model,
    number of edits, fine-tuning type, steps and preserve strategy: editdecay.experiment.measured), else of its
    kind's, else nothing; without ``costs``, every stage left counts its kind's median (``summary``)."""
    from editdecay.api import MeasuredCosts

    total = 0.0
    left_by_kind: dict[str, int] = {}
    if costs is not None:
        measured = MeasuredCosts(costs)
        for c in costs:
            if c["status"] in ("pending", "running"):
                estimate = measured.estimate(c)
                if estimate is not None:
                    total += estimate[0]
                else:
                    left_by_kind[c["kind"]] = left_by_kind.get(c["kind"], 0) + 1
    else:
        for kind, n in summary["stages"].items():
            left = n.get("pending", 0) + n.get("running", 0)
            median = summary["seconds_by_kind"].get(kind, {}).get("median_cpu")
            if left and median is not None:
                total += left * median
            elif left:
                left_by_kind[kind] = left
    unknown = [f"{n} {kind}" for kind, n in sorted(left_by_kind.items())]
    return (total, unknown) if total or unknown else None


def run(args: argparse.Namespace) -> int:
    from editdecay.api import Store
    from editdecay.errors import EditDecayError

    if not Path(args.store).exists():
        raise EditDecayError(f"{args.store}: no results store here (run `editdecay run GRID.yaml --store ...` first)")
    with Store(args.store) as db:
        db.refresh_runs()
        s = db.summary()
        total = sum(s["runs"].values())
        print(f"store {args.store}: grid(s) {', '.join(s['grids']) or '-'}")
        print(f"runs: {total} ({', '.join(f'{n} {k}' for k, n in sorted(s['runs'].items())) or 'none'})")
        print(f"{'kind':<10} {'done':>6} {'running':>8} {'pending':>8} {'failed':>7} {'wall s':>10} {'CPU s':>10}")
        for kind, counts in sorted(s["stages"].items()):
            t = s["seconds_by_kind"].get(kind, {"wall": 0.0, "cpu": 0.0, "with_cpu": 0})
            cpu = f"{t['cpu']:.0f}" if t["with_cpu"] else "-"
            if t["with_cpu"] and t["with_cpu"] < counts.get("done", 0):
                cpu += f" ({t['with_cpu']})"  # stages finished before CPU time was recorded have none
            print(f"{kind:<10} {counts.get('done', 0):>6} {counts.get('running', 0):>8} {counts.get('pending', 0):>8} "
                  f"{counts.get('failed', 0):>7} {t['wall']:>10.0f} {cpu:>10}")
        print(f"compute time of done stages: {s['seconds_done']:.1f} s wall (wall and CPU s: sums over done stages;"
              " CPU s is user + system time of the process that ran each stage)")
        left = remaining_cpu_seconds(s, db.stage_costs())
        if left is not None:
            cpu_s, unknown = left
            print(f"still to run: ~{cpu_s / 3600:.1f} CPU hours (each pending or running stage at the median CPU "
                  "seconds of the done stages like it: same kind, model, number of edits, fine-tuning type, steps and "
                  "preserve strategy, else its kind's; divide by the workers for wall time on free cores)"
                  + (f"; not counted, no CPU seconds yet: {', '.join(unknown)}" if unknown else ""))
        for f in s["failed"]:
            first = (f["error"] or "").splitlines()[0]
            print(f"FAILED {f['stage_id']} (attempts {f['attempts']}): {first}")
        rc = 0
        if args.check:
            problems = db.integrity_check()
            print("integrity: ok" if not problems else "integrity problems:\n  " + "\n  ".join(problems))
            elsewhere = db.missing_artifacts()[1]
            if elsewhere:
                print(f"note: {len(elsewhere)} finished stage(s) have no artifact here; their numbers are in the "
                      "store and no stage still to run reads them (a store moved from another machine)")
            rc = 1 if problems else 0
        if args.snapshot:
            print(f"wrote {db.snapshot(args.snapshot)}")
        if args.export:
            for path in db.export(args.export, args.format):
                print(f"wrote {path}")
    return rc
