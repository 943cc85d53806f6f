"""Measure `editdecay erase` on real SmolLM2 edits (1, 10, 100 CounterFact edits; MEMIT and AlphaEdit).

    # 1. make the edit folders (shared, reused by others): /work/shared-edits/smollm2-135m-<method>-cf<N>
    nohup flock /tmp/editdecay-heavy.lock env OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python \
        scripts/erase_eval.py make-edits > /tmp/erase_eval.log 2>&1 &
    # 2. measure location / tracing / reversal / removal on each (resumable: one JSON per case)
    nohup flock /tmp/editdecay-heavy.lock env OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python \
        scripts/erase_eval.py measure > /tmp/erase_eval.log 2>&1 &

Edits use the project's default hparams and the first N records of ``load_edit_records("counterfact")``
so their target values come from the shared target cache. Results: ``benchmarks/results/erase/*.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EDITS = Path(os.environ.get("EDITDECAY_SHARED_EDITS", "/work/shared-edits"))
RESULTS = ROOT / "benchmarks" / "results" / "erase"
MODEL = "smollm2-135m"
SIZES = (1, 10, 100)
METHODS = ("memit", "alphaedit")


def edit_dir(method: str, n: int) -> Path:
    return EDITS / f"{MODEL}-{method}-cf{n}"


def make_edits(args: argparse.Namespace) -> None:
    import torch

    from editdecay import api

    torch.set_num_threads(1)
    base, tok = api.load_model(MODEL)
    records = api.load_edit_records("counterfact", n=max(SIZES))
    for method in args.methods:
        for n in args.sizes:
            out = edit_dir(method, n)
            if (out / "manifest.json").exists():
                print(f"{out}: exists", flush=True)
                continue
            import copy

            t = time.perf_counter()
            api.edit_to_folder(MODEL, records[:n], out, method=method, model=copy.deepcopy(base), tok=tok,
                               records_source=f"counterfact[:{n}]", progress=True)
            print(f"{out}: {time.perf_counter() - t:.0f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("make-edits", "measure"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    args = parser.parse_args(argv)
    if args.what == "make-edits":
        make_edits(args)
    else:
        from erase_measure import measure  # noqa: E402  (scripts/ sibling, see below)

        measure(args)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
