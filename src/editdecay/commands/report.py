"""`editdecay report`: turn a results store into an HTML/Markdown report with CSV/LaTeX tables, or print it."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="tables, statistics, figures and findings from a results store")
    p.add_argument("store", help="results store (SQLite file written by `editdecay run`)")
    p.add_argument("--out", metavar="DIR", help="write DIR/report.html, DIR/report.md, DIR/tables/*.csv and *.tex")
    p.add_argument("--format", choices=("files", "text"), default=None,
                   help="text: print the findings and main tables to the terminal (default: files when --out is given)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level for the findings (default 0.05)")
    p.add_argument("--min-pairs", type=int, default=3,
                   help="paired runs needed for across-run tests; fewer -> per-edit tests (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap confidence intervals")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from editdecay.api import report_text, write_report
    from editdecay.errors import ConfigError

    fmt = args.format or ("files" if args.out else "text")
    if not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha must be between 0 and 1 (got {args.alpha})")
    if args.min_pairs < 2:
        raise ConfigError(f"--min-pairs must be at least 2 (got {args.min_pairs})")
    kwargs = {"alpha": args.alpha, "min_pairs": args.min_pairs, "seed": args.seed}
    if fmt == "text":
        print(report_text(args.store, **kwargs), end="")
        return 0
    if not args.out:
        raise ConfigError("--format files needs --out DIR")
    written = write_report(args.store, args.out, **kwargs)
    print(f"report: {written['html']}")
    print(f"        {written['markdown']}")
    print(f"tables: {len(written['tables'])} CSV + LaTeX in {args.out}/tables")
    return 0
