"""Benchmark: an adapter-only fine-tune's per-layer weight change, merged per tensor vs materialised.

For every adapter-only fine-tune folder of a grid's work folder, ``finetune_change(edit folder, fine-tune
folder)`` is timed with the adapter merged tensor by tensor (the default) and with the merged model loaded
(``_lazy_adapter`` disabled), alternating, after one warm-up call; medians and the largest relative difference
of the per-layer numbers. Run on the demo's work folder after `make demo`:

    .venv/bin/python benchmarks/bench_layer_change.py demo-out/work
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import editdecay.analyze.weights as weights
from editdecay.artifacts import folder_form, read_finetune_manifest
from editdecay.util.env import machine_info
from editdecay.util.io import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_layer_change.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    real = weights._lazy_adapter
    for ft in sorted((args.workdir / "stages" / "finetune").iterdir()):
        if folder_form(ft) != "adapter" or not read_finetune_manifest(ft).get("edit_manifest"):
            continue
        edit_dir = Path(read_finetune_manifest(ft)["edit_manifest"]).parent
        weights.finetune_change(edit_dir, ft)  # warm-up: file cache, imports
        seconds: dict[str, list[float]] = {"per_tensor": [], "materialised": []}
        for _ in range(args.repeats):
            for way in seconds:
                weights._lazy_adapter = real if way == "per_tensor" else (lambda folder: None)
                start = time.perf_counter()
                got = weights.finetune_change(edit_dir, ft)
                seconds[way].append(time.perf_counter() - start)
                if way == "per_tensor":
                    lazy = got
                else:
                    loaded = got
        weights._lazy_adapter = real
        row = {"folder": ft.name, **{f"{w}_s": statistics.median(s) for w, s in seconds.items()},
               "max_rel_diff": max(abs(lazy[k] - loaded[k]) / max(abs(loaded[k]), 1e-12) for k in loaded)}
        row["ratio"] = row["per_tensor_s"] / row["materialised_s"]
        rows.append(row)
        print(f"{ft.name}: per tensor {row['per_tensor_s']:.2f} s, materialised {row['materialised_s']:.2f} s, "
              f"ratio {row['ratio']:.2f}, largest relative difference {row['max_rel_diff']:.1e}")
    if not rows:
        raise SystemExit(f"no adapter-only fine-tune of an edit under {args.workdir}/stages/finetune")
    atomic_write_json(args.out, {"command": f"benchmarks/bench_layer_change.py {args.workdir}",
                                 "machine": machine_info(), "folders": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
