"""`editdecay evaluate`: edit metrics per record (+ downstream accuracy, perplexity) of one model -> JSON."""

from __future__ import annotations

import argparse

from editdecay.api import add_device_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="measure edit metrics per record, downstream accuracy and perplexity")
    p.add_argument("--model", required=True, help="registered model name or model folder (e.g. an edit folder)")
    p.add_argument("--data", help="edit data set: counterfact, zsre (or another named set / records file)")
    p.add_argument("--records", help="records file, or an edit folder / its manifest.json (exactly its records)")
    p.add_argument("--n", type=int, help="evaluate only the first N records")
    p.add_argument("--downstream", help="'commonsense' or comma-separated task names (boolq,piqa,...)")
    p.add_argument("--limit", type=int, help="downstream items per task (seeded random sample)")
    p.add_argument("--mode", choices=("loglik", "generate"), default="loglik", help="downstream scoring mode")
    p.add_argument("--perplexity", metavar="TEXT", help="also measure perplexity on a raw-text corpus or file")
    p.add_argument("--fluency", action="store_true", help="n-gram entropy of generations (records with generation prompts)")
    p.add_argument("--rescore", action="store_true",
                   help="score the records anew even where the fine-tune folder kept its last tracked scores of them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    add_device_args(p)
    p.add_argument("--out", required=True, help="evaluation JSON to write (atomically)")
    p.set_defaults(handler=run)


def summary_lines(result: dict) -> list[str]:
    """The summary table the command prints."""
    lines = []
    if "summary" in result:
        lines.append(f"{'metric':<24} {'value':>10}")
        for key, value in result["summary"].items():
            shown = f"{value:>10.4f}" if isinstance(value, float) else f"{value!s:>10}"
            lines.append(f"{key:<24} {shown}")
    if "downstream" in result:
        ds = result["downstream"]
        lines.append(f"{'downstream task':<24} {'accuracy':>10} {'n':>6}")
        for task, acc in ds["tasks"].items():
            lines.append(f"{task:<24} {acc:>10.4f} {ds['n'][task]:>6}")
        lines.append(f"{'mean':<24} {ds['mean']:>10.4f}")
    if "perplexity" in result:
        pp = result["perplexity"]
        lines.append(f"{'perplexity (' + pp['text'] + ')':<24} {pp['perplexity']:>10.3f} {pp['n_tokens']:>6}")
    return lines


def run(args: argparse.Namespace) -> int:
    from editdecay.api import apply_device_args, evaluate_model
    from editdecay.errors import ConfigError
    from editdecay.util.io import atomic_write_json

    for name in ("n", "limit", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    device, dtype = apply_device_args(args)
    result = evaluate_model(args.model, data=args.data, records=args.records, n=args.n, downstream=args.downstream,
                            limit=args.limit, seed=args.seed, mode=args.mode, batch_size=args.batch_size,
                            progress=True, fluency=args.fluency, perplexity_text=args.perplexity,
                            device=device, dtype=dtype, reuse_scores=not args.rescore)
    atomic_write_json(args.out, result)
    if "edit_scores_from" in result:
        print(f"edit metrics: the fine-tune's last tracked scores ({result['edit_scores_from']}); --rescore scores anew")
    for line in summary_lines(result):
        print(line)
    print(f"wrote {args.out}")
    return 0
