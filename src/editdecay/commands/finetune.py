"""`editdecay finetune`: full / LoRA / DoRA fine-tuning on chosen layers, with edit decay tracked along the way."""

from __future__ import annotations

import argparse

from editdecay.api import add_device_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model (full, LoRA, DoRA; all/edited/non-edited/listed layers), tracking edit decay",
        description="Fine-tune a (typically edited) model and write a merged model folder with manifest.json, "
        "train_log.jsonl, adapter/ (LoRA/DoRA) and trajectory.json (with --track-edits). Interrupted runs resume "
        "from <out>.partial when the same command is run again.",
    )
    p.add_argument("--model", required=True, help="model folder (e.g. an edit folder) or registered model name")
    p.add_argument("--type", choices=("full", "lora", "dora"), default="lora", help="fine-tuning type (default lora)")
    p.add_argument("--layers", default="all", help="all | edited | non-edited | a list such as 4,5,6 or 4-8")
    p.add_argument("--modules", default="attn,mlp", help="attn, mlp, both (default) or projection names (q_proj,v_proj)")
    p.add_argument("--data", default="commonsense", help="commonsense | alpaca | hotpotqa | wikitext | a file")
    p.add_argument("--max-steps", type=int, help="optimizer steps (wins over --epochs)")
    p.add_argument("--epochs", type=float, help="passes over the data when --max-steps is not given (default 1)")
    p.add_argument("--track-edits", metavar="EDIT_DIR", help="edit folder whose records are scored during training")
    p.add_argument("--eval-every", type=int, help="score tracked edits every K steps (plus step 0 and the end)")
    p.add_argument("--preserve-edits", metavar="EDIT_DIR",
                   help="edit folder whose edits --strategy keeps through fine-tuning (docs/preserve.md)")
    p.add_argument("--strategy", choices=("none", "freeze", "nullspace", "replay", "reedit"),
                   help="how to keep them: freeze the rewritten projections, project updates onto the null space "
                   "of the edit keys, replay the edit facts, or re-edit after fine-tuning")
    p.add_argument("--replay-rate", type=float, help="replay: share of the training examples that are edit facts "
                   "(default 0.1)")
    p.add_argument("--seed", type=int, help="seed for adapter init and data order (default 0)")
    p.add_argument("--lr", type=float, help="learning rate (default 2e-4 LoRA/DoRA, 5e-6 full)")
    p.add_argument("--batch-size", type=int, help="examples per micro-batch (default 4)")
    p.add_argument("--max-length", type=int, help="tokens per example, prompt + response (default 256)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other FinetuneConfig setting, e.g. --set r=16 --set schedule=cosine (repeatable)")
    add_device_args(p, dtype_note="; bfloat16 trains through float32 master weights and optimizer state")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an output folder holding a different run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> dict:
    """Flags + --set pairs -> a FinetuneConfig dict (unknown --set keys are rejected by FinetuneConfig)."""
    from editdecay.util.overrides import parse_overrides

    cfg: dict = {"type": args.type, "layers": args.layers, "modules": args.modules, "data": args.data}
    for flag, key in (("max_steps", "max_steps"), ("epochs", "epochs"), ("eval_every", "eval_every"),
                      ("seed", "seed"), ("lr", "lr"), ("batch_size", "batch_size"), ("max_length", "max_length"),
                      ("strategy", "preserve_strategy"), ("replay_rate", "replay_rate")):
        value = getattr(args, flag)
        if value is not None:
            cfg[key] = value
    cfg.update(parse_overrides(args.set))
    return cfg


def run(args: argparse.Namespace) -> int:
    from editdecay.api import FinetuneConfig, apply_device_args, finetune

    cfg = FinetuneConfig.from_dict(config_from_args(args))
    device, dtype = apply_device_args(args)  # on a machine shared with other jobs, --threads 1 can be faster
    manifest = finetune(args.model, cfg, args.out, track_edits=args.track_edits, overwrite=args.overwrite,
                        preserve_edits=args.preserve_edits,
                        progress=not args.no_progress, device=device, dtype=dtype)
    loss = manifest["final_loss"]
    print(f"{manifest['type']} fine-tuning: {manifest['steps']} steps, {manifest['n_trained']:,} trained parameters "
          f"in layers {manifest['layers']}, final loss {loss if loss is None else round(loss, 4)} -> {args.out}")
    if manifest.get("trajectory"):
        print(f"decay trajectory: {args.out}/trajectory.json")
    return 0
