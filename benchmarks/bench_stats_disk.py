"""Disk of the second-moment statistics: the full d×d form against the packed upper triangle now written.

    python benchmarks/bench_stats_disk.py --from STATS_FOLDER     # repack existing entries (e.g. a grid's
                                                                  #   <workdir>/stages/stats/<id>/)
    python benchmarks/bench_stats_disk.py                         # compute SmolLM2's at the grids' 100,000 tokens
    # -> benchmarks/results/bench_stats_disk.json

Each entry is written by :class:`editdecay.edit.stats_cache.StatsCache` into a temporary folder, read back and
compared bit for bit with the original; the sizes are the safetensors files on disk.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "bench_stats_disk.json"


def _entries(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    if args.source:
        from safetensors.torch import load_file

        out = {}
        for path in sorted(Path(args.source).glob("*.safetensors")):
            tensors = load_file(str(path))
            if "mom2" in tensors:  # the full form
                out[path.stem] = tensors["mom2"]
        if not out:
            raise SystemExit(f"{args.source}: no full-form statistics (*.safetensors holding 'mom2') here")
        return out
    from editdecay import api
    from editdecay.edit.api import resolve_hparams
    from editdecay.edit.stats import second_moments, stats_kwargs
    from editdecay.models.arch import get_adapter

    model, tok = api.load_model(args.model, device="cpu")
    hp = resolve_hparams("memit", model, None, {"mom2_n_tokens": args.mom2_n_tokens})
    res = second_moments(model, tok, get_adapter(model), hp.layers, **stats_kwargs(hp.to_dict()), cache=None)
    return {res.keys[layer]: res.cov[layer] for layer in hp.layers}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", help="a folder of full-form statistics to repack")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--mom2-n-tokens", type=int, default=100_000)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()

    from editdecay.edit.stats_cache import StatsCache

    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = StatsCache(Path(tmp))
        for key, c in _entries(args).items():
            cache.save(key, c, {"key": key})
            packed = (Path(tmp) / f"{key}.safetensors").stat().st_size
            rows.append({"key": key, "dim": c.shape[0], "dtype": str(c.dtype).replace("torch.", ""),
                         "full_bytes": c.numel() * c.element_size(), "packed_file_bytes": packed,
                         "identical_after_reload": bool(torch.equal(cache.load(key), c))})
    full = sum(r["full_bytes"] for r in rows)
    packed = sum(r["packed_file_bytes"] for r in rows)
    report = {"command": "python benchmarks/bench_stats_disk.py " + " ".join(sys.argv[1:]), "entries": rows,
              "full_mb": round(full / 2**20, 1), "packed_mb": round(packed / 2**20, 1),
              "ratio": round(packed / full, 4), "all_identical": all(r["identical_after_reload"] for r in rows),
              "seconds": round(time.time() - started, 1)}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "entries"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
