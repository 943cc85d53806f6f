"""Benchmark: CounterFact records evaluated per second on SmolLM2, batched across records vs one record at a time.

The records are split into blocks; each block is evaluated batched (one ``evaluate_edits`` call, ``--batch-size``
sequences per forward), then the block's first ``--single-per-block`` records are evaluated one record per call.
Interleaving the two keeps them under the same machine load; the table quotes the median records/second over
blocks for each mode (and the totals). The one-at-a-time results must equal the batched ones.

    nice -n 10 .venv/bin/python benchmarks/bench_eval.py            # 1,000 records, 10 blocks
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from editdecay.data.records import load_edit_records
from editdecay.evaluate.api import evaluate_edits
from editdecay.models.registry import load_model
from editdecay.util.env import library_versions, machine_info
from editdecay.util.io import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="counterfact")
    ap.add_argument("--n", type=int, default=1000, help="records evaluated batched")
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--single-per-block", type=int, default=10, help="records per block evaluated one at a time")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_eval.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    records = load_edit_records(args.data, n=args.n)
    size = -(-len(records) // args.blocks)
    blocks = [records[i:i + size] for i in range(0, len(records), size)]
    evaluate_edits(model, tok, records[:4], batch_size=args.batch_size)  # warm-up
    load_start = os.getloadavg()
    batched_rate, single_rate = [], []
    batched_time = single_time = 0.0
    n_single = 0
    mismatches = 0
    for k, block in enumerate(blocks):
        start = time.perf_counter()
        rows = evaluate_edits(model, tok, block, batch_size=args.batch_size)["records"]
        elapsed = time.perf_counter() - start
        batched_time += elapsed
        batched_rate.append(len(block) / elapsed)
        subset = block[:args.single_per_block]
        start = time.perf_counter()
        singles = [evaluate_edits(model, tok, [r], batch_size=args.batch_size)["records"][0] for r in subset]
        elapsed = time.perf_counter() - start
        single_time += elapsed
        n_single += len(subset)
        single_rate.append(len(subset) / elapsed)
        for a, b in zip(rows, singles, strict=False):
            if any(a[m] != b[m] for m in ("efficacy", "paraphrase", "neighborhood")):
                mismatches += 1
        print(f"block {k + 1}/{len(blocks)}: batched {batched_rate[-1]:.2f} rec/s, one at a time "
              f"{single_rate[-1]:.2f} rec/s", flush=True)
        done = sum(len(b) for b in blocks[:k + 1])
        result = {
            "model": args.model, "data": args.data, "complete": k + 1 == len(blocks),
            "n_batched": done, "n_single": n_single, "blocks_done": k + 1, "blocks": len(blocks),
            "batch_size": args.batch_size, "threads": args.threads,
            "batched_records_per_s_median": statistics.median(batched_rate),
            "single_records_per_s_median": statistics.median(single_rate),
            "speedup_median": statistics.median(batched_rate) / statistics.median(single_rate),
            "batched_records_per_s_total": done / batched_time,
            "single_records_per_s_total": n_single / single_time,
            "batched_seconds": batched_time, "single_seconds": single_time,
            "batched_rate_per_block": batched_rate, "single_rate_per_block": single_rate,
            "metric_mismatches_single_vs_batched": mismatches,
            "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
            "machine": machine_info(), "versions": library_versions(),
        }
        atomic_write_json(args.out, result)  # after every block, so an interrupted run keeps its numbers
    print()
    print(f"{'mode':<22} {'records':>8} {'rec/s (median)':>15} {'rec/s (total)':>14}")
    print(f"{'batched (bs=' + str(args.batch_size) + ')':<22} {result['n_batched']:>8} "
          f"{result['batched_records_per_s_median']:>15.2f} {result['batched_records_per_s_total']:>14.2f}")
    print(f"{'one record at a time':<22} {n_single:>8} {result['single_records_per_s_median']:>15.2f} "
          f"{result['single_records_per_s_total']:>14.2f}")
    print(f"speedup (median): {result['speedup_median']:.2f}x; single-vs-batched metric mismatches: {mismatches}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
