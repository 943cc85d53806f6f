"""Benchmark of the editing engine on SmolLM2-135M: statistics, target values, end to end, peak memory.

    nice -n 10 .venv/bin/python benchmarks/bench_edit.py          # ~25 min on 2 shared cores

1. Second moments for the 5 edited layers: ONE pass collecting all layers vs one pass per layer (the
   reference code's way: each pass tokenises the text again and stops at its layer). Same token windows;
   the two results must be equal.
2. Target values z: all requests of a chunk in one optimisation, layers 0..L run once, prefix keys/values
   cached, unembedding only at the loss positions (``compute_targets``) vs one request at a time over the whole
   model with full logits and torch Adam (``compute_target_reference``, what the reference code does). The
   reference is slow, so it runs on a few requests per block (``--ref-per-block``) and its seconds per
   request are scaled to 100; the batched path without the prefix cache is timed too. Blocks are interleaved
   so both see the same machine load; medians over blocks are reported. z from both must agree.
3. ``edit()`` end to end for ``--e2e-n`` CounterFact edits (statistics from the cache, as in any run after
   the first), seconds per 100 edits, and the process's peak resident memory (``resource.getrusage``).
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from editdecay.data.records import load_edit_records
from editdecay.edit.api import edit
from editdecay.edit.hparams import default_hparams
from editdecay.edit.prompts import Request, context_templates
from editdecay.edit.stats import StatsCache, second_moments, second_moments_per_layer
from editdecay.edit.targets import compute_target_reference, compute_targets
from editdecay.models.arch import get_adapter
from editdecay.models.registry import load_model
from editdecay.util.env import library_versions, machine_info
from editdecay.util.io import atomic_write_json


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_stats(model, tok, adapter, layers, n_tokens, repeats):
    one_s, per_s = [], []
    max_diff = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        one = second_moments(model, tok, adapter, layers, n_tokens=n_tokens, cache=None)
        one_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        per = second_moments_per_layer(model, tok, adapter, layers, n_tokens=n_tokens)
        per_s.append(time.perf_counter() - t)
        max_diff = max(max_diff, max(float((one.cov[la] - per[la]).abs().max()) for la in layers))
    return {"layers": layers, "n_tokens": n_tokens, "one_pass_s": statistics.median(one_s),
            "per_layer_s": statistics.median(per_s), "speedup": statistics.median(per_s) / statistics.median(one_s),
            "max_abs_diff": max_diff, "runs": {"one_pass": one_s, "per_layer": per_s}}


def bench_targets(model, tok, adapter, records, block, ref_per_block, full_per_block):
    hp = default_hparams("memit", model)
    templates = context_templates(model, tok, hp.context_template_length_params, seed=0)
    requests = [Request.from_record(r) for r in records]
    rates = {"batched": [], "batched_no_prefix_cache": [], "reference": []}
    z_diff, probs = 0.0, []
    for lo in range(0, len(requests), block):
        chunk = requests[lo:lo + block]
        hp.z_prefix_cache = True
        t = time.perf_counter()
        got = compute_targets(model, tok, adapter, chunk, templates, hp)
        rates["batched"].append((time.perf_counter() - t) / len(chunk))
        probs += got.prob
        if full_per_block:
            hp.z_prefix_cache = False
            t = time.perf_counter()
            compute_targets(model, tok, adapter, chunk[:full_per_block], templates, hp)
            rates["batched_no_prefix_cache"].append((time.perf_counter() - t) / min(full_per_block, len(chunk)))
            hp.z_prefix_cache = True
        for i, req in enumerate(chunk[:ref_per_block]):
            t = time.perf_counter()
            z_ref = compute_target_reference(model, tok, adapter, req, templates, hp)[0]
            rates["reference"].append(time.perf_counter() - t)
            z_diff = max(z_diff, float((z_ref - got.z[i]).abs().max() / got.z[i].abs().max()))
        print(f"[bench] targets block {lo // block + 1}: batched {rates['batched'][-1]:.2f} s/request, "
              f"reference {statistics.median(rates['reference']):.2f} s/request", file=sys.stderr)
    med = {k: statistics.median(v) if v else None for k, v in rates.items()}
    return {"n_batched": len(requests), "n_reference": len(rates["reference"]), "block": block,
            "seconds_per_request": med,
            "seconds_per_100": {k: (v * 100 if v else None) for k, v in med.items()},
            "speedup_vs_reference": med["reference"] / med["batched"],
            "prefix_cache_speedup": (med["batched_no_prefix_cache"] / med["batched"]
                                     if med["batched_no_prefix_cache"] else None),
            "max_rel_z_diff": z_diff, "median_target_prob": statistics.median(probs), "runs": rates}


def bench_e2e(model, tok, records, method, cache):
    work = copy.deepcopy(model)
    t = time.perf_counter()
    res = edit(work, tok, records, method=method, stats_cache=cache, progress=False)
    seconds = time.perf_counter() - t
    del work
    return {"method": method, "n": len(records), "seconds": seconds, "seconds_per_100": seconds * 100 / len(records),
            "timings": res.timings, "median_target_prob": res.summary()["target_prob_median"],
            "peak_rss_mb_after": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (default 1: on 2 shared cores, 2 threads were several times slower)")
    ap.add_argument("--stats-tokens", type=int, default=20_000)
    ap.add_argument("--stats-repeats", type=int, default=2)
    ap.add_argument("--z-n", type=int, default=100, help="requests for the batched target values")
    ap.add_argument("--block", type=int, default=20)
    ap.add_argument("--ref-per-block", type=int, default=2)
    ap.add_argument("--full-per-block", type=int, default=4)
    ap.add_argument("--e2e-n", type=int, default=100)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: stats,targets,e2e")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_edit.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    model, tok = load_model(args.model)
    adapter = get_adapter(model)
    layers = default_hparams("memit", model).layers
    result = {"model": args.model, "threads": args.threads, "machine": machine_info(), "versions": library_versions(),
              "peak_rss_mb_model_loaded": peak_rss_mb()}
    if "stats" not in skip:
        result["stats"] = bench_stats(model, tok, adapter, layers, args.stats_tokens, args.stats_repeats)
        print(f"[bench] stats: {result['stats']['one_pass_s']:.1f}s one pass vs {result['stats']['per_layer_s']:.1f}s "
              f"per layer ({result['stats']['speedup']:.2f}x)", file=sys.stderr)
    if "targets" not in skip:
        records = load_edit_records("counterfact", n=args.z_n)
        result["targets"] = bench_targets(model, tok, adapter, records, args.block, args.ref_per_block,
                                          args.full_per_block)
        result["peak_rss_mb_after_targets"] = peak_rss_mb()
    if "e2e" not in skip:
        records = load_edit_records("counterfact", n=args.e2e_n)
        cache = StatsCache(Path(tempfile.mkdtemp()) / "stats")
        t = time.perf_counter()
        second_moments(model, tok, adapter, layers, n_tokens=default_hparams("memit", model).mom2_n_tokens, cache=cache)
        result["stats_default_tokens_s"] = time.perf_counter() - t
        result["e2e"] = [bench_e2e(model, tok, records, m, cache) for m in ("memit", "alphaedit")]
    result["peak_rss_mb"] = peak_rss_mb()
    atomic_write_json(args.out, result)
    print(f"[bench] wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
