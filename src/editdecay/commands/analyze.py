"""`editdecay analyze shift`: hidden-state shift caused by editing vs by fine-tuning, at the edited layers."""

from __future__ import annotations

import argparse

from editdecay.models.device import add_device_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="analyses of edited and fine-tuned models (activation shift)")
    asub = p.add_subparsers(dest="analysis", metavar="ANALYSIS")
    s = asub.add_parser("shift", help="|h_ed - h_base| vs |h_ed_ft - h_ed| and their angle, on the edit prompts")
    s.add_argument("--base", required=True, help="the unedited model (registered name or folder)")
    s.add_argument("--edited", required=True, help="edit folder (model + manifest.json with records and layers)")
    s.add_argument("--finetuned", required=True, help="the edited model after fine-tuning (folder)")
    s.add_argument("--layers", help="layers to analyse, e.g. 4,5,6 or 4-6 (default: the edited layers)")
    s.add_argument("--n", type=int, help="analyse only the first N edit records")
    s.add_argument("--batch-size", type=int, default=16)
    add_device_args(s, what="the three models")
    s.add_argument("--out", metavar="FILE", help="write the per-layer and per-record results as JSON")
    p.set_defaults(handler=run, analyze_parser=p)


def run(args: argparse.Namespace) -> int:
    from editdecay.errors import ConfigError

    if args.analysis != "shift":
        args.analyze_parser.print_help()
        return 2
    if args.n is not None and args.n < 1:
        raise ConfigError(f"--n must be at least 1 (got {args.n})")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {args.batch_size})")
    from editdecay.analyze.shift import activation_shift, format_shift
    from editdecay.util.io import atomic_write_json
    from editdecay.util.layers import parse_layer_list

    layers = parse_layer_list(args.layers) if args.layers else None
    from editdecay.models.device import apply_device_args

    device, dtype = apply_device_args(args)
    result = activation_shift(args.base, args.edited, args.finetuned, layers=layers, n=args.n,
                              device=device, dtype=dtype,
                              batch_size=args.batch_size)
    print(format_shift(result))
    if args.out:
        atomic_write_json(args.out, result)
        print(f"written: {args.out}")
    return 0
