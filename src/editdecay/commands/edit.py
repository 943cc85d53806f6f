"""`editdecay edit`: write facts into a model with MEMIT or AlphaEdit and save an edit folder."""

from __future__ import annotations

import argparse

from editdecay.api import add_device_args, method_names


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "edit",
        help="edit a model with MEMIT or AlphaEdit and write an edit folder (model + deltas + manifest)",
        description="Write facts into a model (MEMIT or AlphaEdit) and save DIR: a Hugging Face model folder "
                    "that AutoModelForCausalLM loads, deltas.safetensors (W_edited = W_base + delta) and "
                    "manifest.json. Hyperparameters: the model's defaults, then --hparams FILE, then --set/--layers.",
    )
    p.add_argument("--model", default="smollm2-135m", help="registered name, model folder or hub id (default: smollm2-135m)")
    p.add_argument("--method", choices=method_names(), default="memit")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="named data set (counterfact, zsre, counterfact-10k, ...) or a data file")
    src.add_argument("--records", help="a records file: any edit format, or an edit/evaluation manifest's records")
    p.add_argument("--n", type=int, help="edit only the first N records")
    p.add_argument("--layers", help="edited layers, e.g. 4,5,6 or 4-8 (overrides the defaults)")
    p.add_argument("--seed", type=int, default=0, help="seed of the context templates (default 0)")
    p.add_argument("--batch-size", type=int, help="edit sequentially in batches of B records (default: one batch)")
    p.add_argument("--hparams", metavar="FILE", help="YAML/JSON hyperparameters (the reference code's JSON works)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one hyperparameter, e.g. --set mom2_update_weight=150 (repeatable)")
    p.add_argument("--zsre-target", choices=["answers", "alt"], default="answers",
                   help="zsRE edit target: answers[0] (MEMIT/AlphaEdit, default) or alt (EasyEdit)")
    p.add_argument("--stats-dir", help="second-moment cache folder (default: $EDITDECAY_HOME/stats)")
    p.add_argument("--targets-dir", help="target-value cache folder, shared by every method and edit set "
                   "(default: $EDITDECAY_HOME/targets)")
    p.add_argument("--no-targets-cache", action="store_true", help="optimise every target value afresh")
    p.add_argument("--deltas-only", action="store_true",
                   help="write only deltas.safetensors + manifest.json (a few MB); every --model loads it as base + "
                        "deltas, and `editdecay export` turns it into a model folder")
    add_device_args(p, dtype_note="; keys, z, second moments and solves stay float32/float64")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--print-hparams", action="store_true", help="print the resolved hyperparameters and exit")
    p.set_defaults(handler=run)


def _load_records(args: argparse.Namespace):
    from editdecay.api import load_edit_records, load_records_arg
    from editdecay.errors import ConfigError

    source = args.records or args.data or "counterfact"
    if args.zsre_target == "answers":  # records from a data name, a records file or an edit folder's manifest
        records = load_records_arg(source, n=args.n)
    else:
        records = load_edit_records(source, n=args.n, zsre_target=args.zsre_target)
    if not records:
        raise ConfigError(f"no records loaded from {source}")
    return records, str(source)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from editdecay.api import parse_layers, resolve_hparams
    from editdecay.util.overrides import parse_overrides

    overrides = parse_overrides(args.overrides)
    if isinstance(overrides.get("layers"), str):  # --set layers=4-8, as --layers
        overrides["layers"] = parse_layers(overrides["layers"])
    elif isinstance(overrides.get("layers"), int) and not isinstance(overrides["layers"], bool):
        overrides["layers"] = [overrides["layers"]]
    if args.layers:
        overrides["layers"] = parse_layers(args.layers)
    if args.print_hparams:
        from transformers import AutoConfig

        from editdecay.api import resolve_model

        config = AutoConfig.from_pretrained(resolve_model(args.model))
        hp = resolve_hparams(args.method, config, args.hparams, overrides)
        print(json.dumps(hp.to_dict(), indent=2))
        return 0

    from editdecay.api import StatsCache, apply_device_args, edit_to_folder

    device, dtype = apply_device_args(args)
    records, source = _load_records(args)
    cache = StatsCache(args.stats_dir) if args.stats_dir else StatsCache.default()
    result = edit_to_folder(
        args.model, records, args.out, method=args.method, hparams=args.hparams, stats_cache=cache,
        batch_size=args.batch_size, seed=args.seed, progress=not args.quiet, overrides=overrides,
        overwrite=args.overwrite, records_source=source, device=device, dtype=dtype,
        targets_cache=False if args.no_targets_cache else (args.targets_dir or None), deltas_only=args.deltas_only,
    )
    summary = result.summary()
    times = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    print(f"edited {len(records)} facts into {args.model} with {result.method} at layers {result.layers} "
          f"(median target prob {summary['target_prob_median']:.3f}); {times}")
    print(f"wrote {args.out}", file=sys.stderr if args.quiet else sys.stdout)
    return 0
