"""`editdecay export`: any edit folder, fine-tune folder, grid stage or run -> a plain model folder."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write the model of an edit/fine-tune folder, a stage or a run as a folder transformers loads",
        description="Materialise a model: a deltas-only edit folder (base + deltas), an adapter-only fine-tune "
                    "folder (model + merged adapter), a stage id or a run id of a results store (--store; a run "
                    "exports the model of --group, default M_ed_ft). The output loads with "
                    "AutoModelForCausalLM.from_pretrained(OUT).",
    )
    p.add_argument("source", help="EDIT_DIR | FINETUNE_DIR | stage id | run id")
    p.add_argument("--store", help="results store, for a stage or run id")
    p.add_argument("--group", default="M_ed_ft", help="which of a run's models: M, M_ft, M_ed, M_ed_ft (default)")
    p.add_argument("--dtype", help="float32 (default), bfloat16 or float16")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from editdecay import api

    out = api.export_model(args.source, args.out, store=args.store, group=args.group, overwrite=args.overwrite,
                           dtype=args.dtype)
    print(f"wrote {out}")
    return 0
