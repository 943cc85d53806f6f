"""bfloat16 vs float32 edit of SmolLM2: ES/PS/NS after the edit and peak memory, each dtype in its own process.

    OMP_NUM_THREADS=1 python benchmarks/bench_dtype.py --n 30 --mom2-n-tokens 30000
    # -> benchmarks/results/bench_dtype.json

Each dtype runs in a fresh subprocess (so one's peak does not hide the other's): load SmolLM2 in that dtype,
compute the second moments and target values from scratch (no cache: a bf16 model has its own), edit with the
default hyperparameters (MEMIT unless --method), score the edited model on the same CounterFact records.
Peak memory is the process's peak resident set (ru_maxrss), reported whole and above the baseline measured
after the imports and before the model loads.

    OMP_NUM_THREADS=1 python benchmarks/bench_dtype.py --tensors --n 16 --threads 1
    # -> benchmarks/results/bench_dtype_tensors.json

``--tensors`` measures what torch itself holds, free of the process's fixed part (interpreter, libraries,
tokenizer) and of the allocator's slack: the tensors autograd saves for one target-value chunk's backward pass, by
dtype, and the tensor peak of a whole edit (profiler allocation events; the CPU analogue of a GPU's
max_memory_allocated). The issue's aims: |ES/PS/NS difference| <= 0.02 and
bf16 peak <= 0.6x float32's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_dtype.json"
METRICS = ("efficacy", "paraphrase", "neighborhood")


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cpu() -> dict:
    """The machine, and whether its CPU lacks native bfloat16 (then its bf16 matrix products are emulated: slow)."""
    from editdecay.models.device import emulated_half_precision
    from editdecay.util.env import machine_info

    return {**machine_info(), "bf16_emulated": emulated_half_precision("bfloat16")}


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def saved_activations_mb(model, tok, records, method: str) -> dict[str, float]:
    """MB of the tensors autograd keeps for the backward pass of one target-value step on ``records`` (one chunk),
    by dtype, each storage counted once: what scales with the model's dtype, free of the allocator and of the
    process's fixed part (the CPU analogue of a GPU's allocated activation memory)."""
    import torch

    from editdecay.edit.api import resolve_hparams
    from editdecay.edit.prompts import Request, context_templates
    from editdecay.edit.targets import compute_targets
    from editdecay.models.arch import get_adapter

    hp = resolve_hparams(method, model, None, {"v_num_grad_steps": 1})  # one forward, nothing optimised
    templates = context_templates(model, tok, hp.context_template_length_params, 0)
    storages: dict[int, tuple[str, int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages.setdefault(storage.data_ptr(), (str(t.dtype).replace("torch.", ""), storage.nbytes()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        compute_targets(model, tok, get_adapter(model), [Request.from_record(r) for r in records[:hp.z_batch_size]],
                        templates, hp, progress=False, cache=None)
    out: dict[str, float] = {}
    for dtype, nbytes in storages.values():
        out[dtype] = out.get(dtype, 0.0) + nbytes / 2**20
    return {k: round(v, 1) for k, v in sorted(out.items())} | {"total": round(sum(out.values()), 1)}


def tensor_peak_mb(model, tok, records, method: str, mom2_n_tokens: int, z_steps: int) -> dict[str, float]:
    """The most memory torch's tensors held at once during a whole edit (statistics, target values, update), from
    the profiler's allocation and free events, plus the weights held throughout: the CPU analogue of a GPU's
    ``max_memory_allocated`` (no interpreter, libraries, tokenizer or allocator slack). ``z_steps`` target-value
    steps suffice: every step builds and frees the same graph, and the first is the largest."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    from editdecay import api
    from editdecay.edit.stats import StatsCache

    overrides = {"v_num_grad_steps": z_steps} | ({"mom2_n_tokens": mom2_n_tokens} if mom2_n_tokens else {})
    with tempfile.TemporaryDirectory() as stats_dir, \
            profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        api.edit(model, tok, records, method=method, overrides=overrides, stats_cache=StatsCache(stats_dir),
                 targets_cache=False, progress=False)
    current = peak = 0
    # allocations are an op's own memory, frees outside ops are "[memory]" events: in time order, their running sum
    for event in sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return {"weights": round(weights, 1), "peak_above_weights": round(peak / 2**20, 1),
            "peak": round(weights + peak / 2**20, 1), "unfreed_at_end": round(current / 2**20, 1)}


def worker(args: argparse.Namespace) -> dict:
    import torch

    from editdecay import api
    from editdecay.edit.stats import StatsCache
    from editdecay.models.device import configure_threads

    threads = configure_threads(args.threads)
    baseline = _maxrss_mb()
    t0 = time.perf_counter()
    model, tok = api.load_model(args.model, device="cpu", dtype=args.dtype)
    load_s = time.perf_counter() - t0
    after_load = _maxrss_mb()
    records = api.load_edit_records("counterfact", n=args.n)
    if args.tensors:
        return {"dtype": args.dtype, "saved_activations_mb": saved_activations_mb(model, tok, records, args.method),
                "tensor_peak_mb": tensor_peak_mb(model, tok, records, args.method, args.mom2_n_tokens, args.z_steps)}
    overrides = {"mom2_n_tokens": args.mom2_n_tokens} if args.mom2_n_tokens else None
    with tempfile.TemporaryDirectory() as stats_dir:
        result = api.edit(model, tok, records, method=args.method, overrides=overrides,
                          stats_cache=StatsCache(stats_dir), targets_cache=False, progress=False, seed=args.seed)
    after_edit = _maxrss_mb()
    t1 = time.perf_counter()
    scores = api.evaluate_edits(model, tok, records)
    eval_s = time.perf_counter() - t1
    saved = saved_activations_mb(model, tok, records, args.method)  # after the peak: it cannot raise it
    return {
        "saved_activations_mb": saved,
        "dtype": args.dtype,
        "weights_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "summary": {k: scores["summary"][k] for k in METRICS},
        "target_prob_median": result.summary()["target_prob_median"],
        "peak_rss_mb": round(_maxrss_mb(), 1),
        "peak_rss_after_load_mb": round(after_load, 1),
        "peak_rss_after_edit_mb": round(after_edit, 1),
        "baseline_rss_mb": round(baseline, 1),
        "peak_above_baseline_mb": round(_maxrss_mb() - baseline, 1),
        "timings_s": {k: round(v, 2) for k, v in {**result.timings, "load": load_s, "evaluate": eval_s}.items()},
        "threads": threads,
        "cpu_s": round(_cpu_s(), 1),  # user+system CPU seconds of the worker (wall times vary with the machine's load)
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="memit", choices=("memit", "alphaedit"))
    p.add_argument("--n", type=int, default=30, help="CounterFact records (the first N)")
    p.add_argument("--mom2-n-tokens", type=int, default=30000, help="second-moment tokens (0: the default)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--seed", type=int, default=0, help="the edit's seed (its context templates); another seed "
                   "shows how much a metric moves between two float32 edits of the same records")
    p.add_argument("--tensors", action="store_true", help="instead of the full edit: the saved activations of one "
                   "target-value chunk, and the tensor peak of an edit with --z-steps target-value steps, per dtype; "
                   "writes bench_dtype_tensors.json unless --out")
    p.add_argument("--z-steps", type=int, default=2, help="--tensors: target-value steps of the profiled edit")
    p.add_argument("--out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.out = args.out or str(RESULTS.with_name("bench_dtype_tensors.json") if args.tensors else RESULTS)
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(worker(args)))
        return 0

    runs = {}
    started = time.time()
    loadavg_start = os.getloadavg()
    for dtype in args.dtypes.split(","):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            out = fh.name
        cmd = [sys.executable, __file__, "--worker", "--dtype", dtype, "--worker-out", out, "--model", args.model,
               "--method", args.method, "--n", str(args.n), "--mom2-n-tokens", str(args.mom2_n_tokens),
               "--seed", str(args.seed), "--z-steps", str(args.z_steps)] + (["--tensors"] if args.tensors else [])
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        print(f"[bench_dtype] {dtype}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
        runs[dtype] = json.loads(Path(out).read_text())
        os.unlink(out)
        shown = {k: runs[dtype][k] for k in ("saved_activations_mb", "tensor_peak_mb")} if args.tensors else (
            f"{runs[dtype]['summary']} peak {runs[dtype]['peak_rss_mb']} MB")
        print(f"[bench_dtype] {dtype}: {shown}", file=sys.stderr)
    report: dict = {
        "command": "python benchmarks/bench_dtype.py " + " ".join(sys.argv[1:]),
        "model": args.model, "method": args.method, "n_records": args.n, "mom2_n_tokens": args.mom2_n_tokens,
        "seed": args.seed, **({"z_steps": args.z_steps} if args.tensors else {}),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_start": loadavg_start,
                    "loadavg_end": os.getloadavg(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), **_cpu()},
        "seconds": round(time.time() - started, 1),
        "runs": runs,
    }
    if {"float32", "bfloat16"} <= set(runs) and args.tensors:
        a, b = runs["float32"], runs["bfloat16"]
        report["saved_activations_ratio"] = round(b["saved_activations_mb"]["total"] / a["saved_activations_mb"]["total"],
                                                  3)
        report["tensor_peak_ratio"] = round(b["tensor_peak_mb"]["peak"] / a["tensor_peak_mb"]["peak"], 3)
        report["aims"] = {"tensor_peak_at_most_0.6x": report["tensor_peak_ratio"] <= 0.6}
    if {"float32", "bfloat16"} <= set(runs) and not args.tensors:
        diff = {k: round(b["summary"][k] - a["summary"][k], 4) for k in METRICS}
        report["bf16_minus_fp32"] = diff
        report["peak_ratio_bf16_over_fp32"] = round(b["peak_rss_mb"] / a["peak_rss_mb"], 3)
        report["peak_above_baseline_ratio"] = round(b["peak_above_baseline_mb"] / a["peak_above_baseline_mb"], 3)
        report["aims"] = {"metrics_within_0.02": all(abs(v) <= 0.02 for v in diff.values()),
                          "peak_at_most_0.6x": report["peak_ratio_bf16_over_fp32"] <= 0.6,
                          "peak_above_baseline_at_most_0.6x": report["peak_above_baseline_ratio"] <= 0.6}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in report if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
