"""`editdecay erase`: find and remove edits; write a model folder plus manifest.json saying what was changed."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "erase",
        help="remove edits: exact restore from --base, removal of --records, or weights-only reversal",
        description="With --base: restore every changed parameter bit for bit. With --records (suspected edits: an "
                    "edit manifest or a records file): remove them on --layers (or the located layers) by editing "
                    "them back to their true targets (reedit), projecting out the keys' new directions (project) "
                    "or fine-tuning those layers' MLP on generic data for --budget-steps (finetune). With neither: "
                    "locate edited layers from the weights and remove their top singular components (svd). "
                    "Writes DIR2 (a model folder) and DIR2/manifest.json.",
    )
    p.add_argument("--model", required=True, help="the (possibly) edited model: folder or registered name")
    p.add_argument("--base", help="the unedited model (registered name or folder)")
    p.add_argument("--records", help="suspected edit records: an edit folder / manifest.json or a records file")
    p.add_argument("--layers", help="layers to act on, e.g. 4-8 (default: located)")
    p.add_argument("--budget-steps", type=int,
                   help="optimisation steps allowed: fine-tuning steps (finetune, default 50) or the target "
                        "optimisation steps of reedit (at most the editor's default)")
    p.add_argument("--strategy", choices=("reedit", "project", "finetune", "svd"),
                   help="how to remove records (default reedit with --records, svd without)")
    p.add_argument("--downstream-limit", type=int, default=0,
                   help="score N items per commonsense task before and after (the downstream cost; default off)")
    p.add_argument("--threshold", type=float, help="weights-only location threshold (robust z-score)")
    p.add_argument("--out", required=True, metavar="DIR2", help="output model folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from editdecay.api import ERASE_THRESHOLD, erase
    from editdecay.errors import ConfigError
    from editdecay.util.layers import parse_layer_list

    if args.downstream_limit < 0:
        raise ConfigError(f"--downstream-limit {args.downstream_limit}: must be at least 0")
    layers = parse_layer_list(args.layers) if args.layers else None
    manifest = erase(args.model, args.out, base=args.base, records=args.records, layers=layers,
                     budget_steps=args.budget_steps, strategy=args.strategy, downstream_limit=args.downstream_limit,
                     threshold=args.threshold if args.threshold is not None else ERASE_THRESHOLD,
                     overwrite=args.overwrite, progress=not args.no_progress)
    print(f"mode: {manifest['mode']} ({manifest['strategy']}); located layers: {manifest['located_layers']}")
    if manifest.get("bit_identical") is not None:
        print(f"restored {len(manifest['restored'])} parameters; bit-identical to the base: {manifest['bit_identical']}")
    if "erased" in manifest:
        print(f"erased: {manifest['erased']}, still holding: {manifest['still_holding']}")
    if "downstream" in manifest:
        d = manifest["downstream"]
        print(f"downstream mean {d['before']:.3f} -> {d['after']:.3f} (limit {d['limit']})")
    print(f"written: {args.out}")
    return 0
