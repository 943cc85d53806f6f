"""`editdecay inspect-edits`: report which layers of a model were edited and what the edits write (no changes)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect-edits",
        help="locate edited layers (from the base weights, or from the weights alone) and trace edited objects",
        description="With --base: every parameter that differs from the base, with the rank and norm of its "
                    "change. Without: a weights-only score per layer (docs/erase.md). Either way the top singular "
                    "directions of the located matrices are read as the objects they promote. Changes nothing.",
    )
    p.add_argument("--model", required=True, help="model folder or registered name to inspect")
    p.add_argument("--base", help="the unedited model (registered name or folder): locate exactly from ΔW")
    p.add_argument("--trace-k", type=int, help="singular directions read per located layer")
    p.add_argument("--trace-mode", choices=("forward", "lens"), default="forward",
                   help="read a direction through the remaining layers (forward, default) or the logit lens")
    p.add_argument("--threshold", type=float, help="weights-only location threshold (robust z-score)")
    p.add_argument("--out", required=True, metavar="F.json", help="write the report here")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from editdecay.api import ERASE_THRESHOLD, inspect_edits
    from editdecay.errors import ConfigError

    if args.trace_k is not None and args.trace_k < 1:
        raise ConfigError(f"--trace-k {args.trace_k}: must be at least 1")
    report = inspect_edits(args.model, args.base, args.out, trace_k=args.trace_k, trace_mode=args.trace_mode,
                           threshold=args.threshold if args.threshold is not None else ERASE_THRESHOLD)
    print(f"mode: {report['mode']}; located layers: {report['located_layers'] or 'none'}")
    for c in report.get("changes", []):
        print(f"  {c['name']}: rank {c['rank']}, |dW| {c['norm']:.4g} ({100 * c['rel_norm']:.2f}% of |W|)")
    if report["traced_objects"]:
        print(f"traced objects: {', '.join(report['traced_objects'][:20])}")
    print(f"written: {args.out}")
    return 0
