"""`editdecay compare BEFORE.json AFTER.json`: EFR, relative decrease, emergent edits and survival."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="decay metrics between two evaluations of the same records")
    p.add_argument("before", help="evaluation JSON before fine-tuning (editdecay evaluate --out)")
    p.add_argument("after", help="evaluation JSON after fine-tuning")
    p.add_argument("--threshold", type=float, default=0.5, help="a record succeeds when its value is above this")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the survival CI")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--out", help="comparison JSON to write (atomically)")
    p.set_defaults(handler=run)


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}%" if pct else f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    from editdecay.api import compare
    from editdecay.errors import DataError
    from editdecay.util.io import atomic_write_json, read_json

    loaded = []
    for path in (args.before, args.after):
        try:
            loaded.append(read_json(path))
        except FileNotFoundError:
            raise DataError(path, "file not found") from None
        except ValueError as exc:
            raise DataError(path, f"not valid JSON: {exc}") from None
        except OSError as exc:
            raise DataError(path, f"cannot read: {exc.strerror or exc}") from None
    result = compare(loaded[0], loaded[1], threshold=args.threshold, n_boot=args.n_boot, seed=args.seed,
                     before_name=args.before, after_name=args.after)
    result["before"], result["after"] = args.before, args.after
    print(f"{'metric':<20} {'before':>8} {'after':>8} {'EFR':>8} {'rel.dec':>9} {'emergent':>9} "
          f"{'survival [95% CI]':>26}")
    for metric in result["efr"]:
        s = result["survival"][metric]
        ci = f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]" if s["rate"] is not None else ""
        print(f"{metric:<20} {result['means'][metric]['before']:>8.4f} {result['means'][metric]['after']:>8.4f} "
              f"{_fmt(result['efr'][metric]):>8} {_fmt(result['relative_decrease'][metric], True):>9} "
              f"{_fmt(result['emergent'][metric]):>9} {_fmt(s['rate']):>8} {ci:>17}")
    print(f"records: {result['n_records']}")
    if args.out:
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0
