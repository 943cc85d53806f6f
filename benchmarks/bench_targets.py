"""Shared target values vs separate edits: MEMIT and AlphaEdit on the same CounterFact records.

    flock /tmp/editdecay-heavy.lock nice -n 5 .venv/bin/python benchmarks/bench_targets.py --n 30

"separate" is today's two independent edits, each optimising its own target values (``targets_cache=False``);
"shared" is MEMIT then AlphaEdit with one fresh target-value cache, so AlphaEdit reuses MEMIT's z (what a grid's
targets stage does). The second moments are counted once beforehand and read from a cache by all four edits,
so the comparison is the editing work alone. Reported: editing seconds of each edit and the ratio
shared / separate (measured side by side in one process), and the largest difference between the deltas
of the two ways (they must agree to float tolerance). Results: ``benchmarks/results/bench_targets.json``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

from editdecay.data.records import load_edit_records
from editdecay.edit.api import edit
from editdecay.edit.stats import StatsCache
from editdecay.edit.targets_cache import TargetCache
from editdecay.models.registry import load_model
from editdecay.util.env import library_versions, machine_info
from editdecay.util.io import atomic_write_json

OUT = Path(__file__).resolve().parent / "results" / "bench_targets.json"


def timed_edit(model, tok, records, method, stats, cache):
    work = copy.deepcopy(model)
    t = time.perf_counter()
    result = edit(work, tok, records, method=method, stats_cache=stats, targets_cache=cache, progress=False)
    return time.perf_counter() - t, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=30, help="CounterFact records (the first N)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, device="cpu")
    records = load_edit_records("counterfact", n=args.n)
    stats = StatsCache.default()
    edit(copy.deepcopy(model), tok, records[:1], method="memit", stats_cache=stats, targets_cache=False,
         progress=False)  # warm the statistics cache (and the allocator) for every edit below
    with tempfile.TemporaryDirectory() as tmp:
        shared_cache = TargetCache(Path(tmp) / "z")
        times: dict[str, float] = {}
        deltas = {}
        # interleaved so both ways see the same machine load
        times["separate_memit"], sep_m = timed_edit(model, tok, records, "memit", stats, False)
        times["shared_memit"], sh_m = timed_edit(model, tok, records, "memit", stats, shared_cache)
        times["separate_alphaedit"], sep_a = timed_edit(model, tok, records, "alphaedit", stats, False)
        times["shared_alphaedit"], sh_a = timed_edit(model, tok, records, "alphaedit", stats, shared_cache)
        for name, a, b in (("memit", sep_m, sh_m), ("alphaedit", sep_a, sh_a)):
            deltas[name] = max(float((a.deltas[k] - b.deltas[k]).abs().max()) for k in a.deltas)
    separate = times["separate_memit"] + times["separate_alphaedit"]
    shared = times["shared_memit"] + times["shared_alphaedit"]
    out = {"n_edits": args.n, "model": args.model, "threads": args.threads, "seconds": times,
           "separate_total_s": separate, "shared_total_s": shared, "ratio_shared_over_separate": shared / separate,
           "max_abs_delta_difference": deltas, "target_prob_median": sorted(sh_m.target_prob)[args.n // 2],
           "machine": machine_info(), "versions": library_versions()}
    atomic_write_json(OUT, out)
    print(f"separate {separate:.0f} s, shared {shared:.0f} s: ratio {shared / separate:.2f}; "
          f"max |Δ deltas| {deltas}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
