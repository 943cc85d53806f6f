"""`editdecay run GRID.yaml --store results.db`: execute a grid; rerun the same command to resume."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a grid into a results store (resumable; failed stages are recorded)")
    p.add_argument("grid", help="grid YAML file (see configs/)")
    p.add_argument("--store", required=True, help="SQLite results file (created if missing)")
    p.add_argument("--workdir", help="artifact folder (default: the grid's workdir, else beside the store)")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local (in-process or --workers processes) or ray (the cluster at RAY_ADDRESS)")
    p.add_argument("--workers", default="auto",
                   help="local backend: worker processes; 1 runs stages in this process; default auto: one per "
                   "usable core. Stages run side by side only while their resources.num_cpus fit in --cpus and "
                   "their estimated peak memory (editdecay plan) in this machine's RAM")
    p.add_argument("--cpus", type=int, help="local backend: cores the stages may use at once (default: every "
                   "usable core)")
    p.add_argument("--retry-failed", action="store_true", help="run failed stages again")
    p.add_argument("--skip", default="", metavar="KINDS",
                   help="stage kinds to leave for a later run, with everything that needs them (comma-separated; "
                   "e.g. --skip finetune computes statistics, target values, edits and their evaluations only)")
    p.add_argument("--order", choices=["results-first", "critical-path"], default="results-first",
                   help="which ready stage starts first: results-first (default) evaluates each fine-tune before "
                   "starting another, so an interrupted grid keeps every finished result; critical-path starts "
                   "the longest remaining chain first (shortest wall time when nothing is interrupted)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--device", help="default torch device of the stages run here and by local workers (sets "
                   "$EDITDECAY_DEVICE; default: cuda when present, else cpu); dtype is the grid key 'dtype'")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: every available core, or $OMP_NUM_THREADS)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import os

    from editdecay.api import DEVICE_ENV, configure_threads, resolve_device, run_grid

    if args.device:
        os.environ[DEVICE_ENV] = str(resolve_device(args.device))  # checked here, inherited by local workers
    configure_threads(args.threads)

    result = run_grid(args.grid, args.store, workdir=args.workdir, backend=args.backend, workers=args.workers,
                      cpus=args.cpus, retry_failed=args.retry_failed, progress=not args.no_progress,
                      skip=[k.strip() for k in args.skip.split(",") if k.strip()], order=args.order)
    runs = ", ".join(f"{n} {status}" for status, n in sorted(result.runs.items())) or "none"
    print(f"runs: {runs}")
    print(f"stages: {len(result.executed)} computed, {len(result.adopted)} adopted, {len(result.failed)} failed, "
          f"{len(result.skipped)} skipped (input failed) in {result.seconds:.1f} s")
    if result.deferred:
        print(f"{len(result.deferred)} stage(s) left for a later run (--skip {args.skip})")
    if result.missing:
        print(f"{len(result.missing)} stage(s) were recorded done but their artifacts were missing: computed again")
    if result.failed:
        print(f"see `editdecay status --store {args.store}` for errors; `--retry-failed` runs them again")
    return 0 if result.complete else 1
