"""`editdecay data inspect FILE`: counts, a sample record and every problem found."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect edit-data files")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    inspect = dsub.add_parser(
        "inspect", help="print counts, a sample record and any problems found (exit 1 on any problem)",
        description="Print counts, a sample record and every problem found. Exit status: 0 when every record is "
        "valid, 1 when any record has a problem (or the file cannot be read), so it can gate a script.",
    )
    inspect.add_argument("file", help="a data file or a named data set (counterfact, zsre, ...)")
    inspect.add_argument("--format", dest="fmt", help="force a format: counterfact-easyedit, counterfact-rome, zsre, jsonl")
    inspect.add_argument("--zsre-target", choices=["answers", "alt"], default="answers",
                         help="zsRE edit target: answers[0] (MEMIT/AlphaEdit, default) or alt (EasyEdit)")
    inspect.set_defaults(handler=run)
    p.set_defaults(handler=lambda args: p.print_help() or 2)


def run(args: argparse.Namespace) -> int:
    from editdecay.api import LoadReport, load_edit_records

    report = LoadReport(path=args.file, fmt="", total=0, loaded=0)
    records = load_edit_records(args.file, fmt=args.fmt, skip_invalid=True, zsre_target=args.zsre_target, report=report)
    print(f"file:     {report.path}")
    print(f"format:   {report.fmt}")
    print(f"records:  {report.total} ({report.loaded} valid, {len(report.problems)} with problems)")
    if records:
        n_para = sum(len(r.paraphrase_prompts) for r in records)
        n_neigh = sum(len(r.neighborhood_prompts) for r in records)
        print(f"prompts:  {n_para} paraphrase, {n_neigh} neighbourhood")
        print("sample:")
        print(json.dumps(records[0].to_dict(), indent=2, ensure_ascii=False))
    if report.problems:
        print("problems:")
        for line in report.problems[:50]:
            print(f"  - {line}")
        if len(report.problems) > 50:
            print(f"  ... and {len(report.problems) - 50} more")
    return 1 if report.problems or not records else 0
