"""Benchmark: fine-tuning tokens/second on SmolLM2, editdecay's loop vs a plain HF Trainer + PEFT loop.

For each type (full, LoRA, DoRA) both loops train a fresh copy of the model for ``--steps`` optimizer steps on
exactly the same batches (the HF Trainer is given the examples in editdecay's order with a sequential
sampler), with the same settings: all layers, attention + MLP projections, batch ``--batch-size``, max length
``--max-length``, AdamW, linear schedule with warmup, clipping at 1.0, no accumulation, float32 on CPU. A step's
time is the wall time (and, separately, this process's CPU time) between consecutive step ends (data, forward, backward, clip, optimizer), so the first
step (start-up, allocator warm-up) is not counted; the table quotes the median tokens/second over the
remaining steps (tokens = non-padding tokens of the batch). This is a few steps each: a throughput
comparison, not a training run. The two loops of one type run back to back, alternating which goes first,
so they see similar machine load; the load average is recorded.

    nice -n 10 .venv/bin/python benchmarks/bench_finetune.py            # 3 types x 2 loops x 5 steps
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from editdecay.finetune import select as sel
from editdecay.finetune.api import finetune
from editdecay.finetune.config import FinetuneConfig
from editdecay.finetune.data import TrainData, load_examples
from editdecay.models.registry import load_model
from editdecay.util.env import library_versions, machine_info
from editdecay.util.io import atomic_write_json


def _rates(ends: list[float], tokens: list[int]) -> list[float]:
    """tokens/s of steps 2..N from step-end timestamps (step 1 has no previous end)."""
    return [tokens[i] / (ends[i] - ends[i - 1]) for i in range(1, len(ends))]


def _summary(ends: list[float], cpu_ends: list[float], tokens: list[int], losses: list[float]) -> dict[str, Any]:
    rates, cpu_rates = _rates(ends, tokens), _rates(cpu_ends, tokens)
    return {"rates": rates, "median_tokens_per_s": statistics.median(rates), "cpu_rates": cpu_rates,
            "median_tokens_per_cpu_s": statistics.median(cpu_rates), "tokens": tokens, "losses": losses}


def run_editdecay(model_name: str, cfg: FinetuneConfig, workdir: Path) -> dict[str, Any]:
    ends: list[float] = []
    cpu_ends: list[float] = []
    tokens: list[int] = []
    losses: list[float] = []

    def on_step(step: int, row: dict[str, Any]) -> None:
        ends.append(time.perf_counter())
        cpu_ends.append(time.process_time())
        tokens.append(row["tokens"])
        losses.append(row["loss"])

    finetune(model_name, cfg, workdir / f"ours-{cfg.type}", progress=False, on_step=on_step)
    return _summary(ends, cpu_ends, tokens, losses)


def run_hf_trainer(model_name: str, cfg: FinetuneConfig, workdir: Path) -> dict[str, Any]:
    """The baseline users would write: PEFT model + transformers Trainer on the same tokenised batches."""
    from peft import get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model, tok = load_model(model_name)
    if cfg.type != "full":
        selection = sel.select(model, cfg)
        model = get_peft_model(model, sel.lora_config(model, selection, cfg))
    else:
        sel.apply_full_selection(model, sel.select(model, cfg))
    data = TrainData(load_examples(cfg.data, cfg.max_examples), tok, cfg.max_length, cfg.batch_size, cfg.seed)
    order = [i for m in range(cfg.max_steps) for i in data.indices(m)]
    rows = [{"input_ids": data.encoded(i).input_ids, "labels": data.encoded(i).labels} for i in order]
    tokens: list[int] = []

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), width), data.pad_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for k, r in enumerate(batch):
            n = len(r["input_ids"])
            ids[k, :n], labels[k, :n], mask[k, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        tokens.append(int(mask.sum()))
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    ends: list[float] = []
    cpu_ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())

    class InOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    args = TrainingArguments(
        output_dir=str(workdir / f"hf-{cfg.type}"), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=1, max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear", warmup_steps=cfg.warmup_steps or 0, max_grad_norm=cfg.max_grad_norm,
        weight_decay=cfg.weight_decay, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, seed=cfg.seed, disable_tqdm=True, remove_unused_columns=False,
    )
    trainer = InOrder(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Clock()])
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return _summary(ends, cpu_ends, tokens[: len(ends)], losses)


def fitting_examples(args: argparse.Namespace, folder: Path) -> Path:
    """The first steps x batch examples of ``--data`` whose prompt + response + EOS fit ``--max-length`` whole,
    as a JSONL file: every step then trains on real response tokens in both loops."""
    from editdecay.data.corpora import dumps_example
    from editdecay.finetune.data import encode_example

    _, tok = load_model(args.model)
    need = args.steps * args.batch_size
    chosen = []
    for ex in load_examples(args.data):
        enc = encode_example(ex, tok, args.max_length + 1)
        if len(enc.input_ids) <= args.max_length:
            chosen.append(ex)
        if len(chosen) == need:
            break
    if len(chosen) < need:
        raise SystemExit(f"only {len(chosen)} examples of {args.data} fit --max-length {args.max_length}")
    path = folder / "bench_data.jsonl"
    path.write_text("".join(dumps_example(ex) + "\n" for ex in chosen), encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="commonsense:ARC-Easy")
    ap.add_argument("--types", default="full,lora,dora")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core box two spinning OpenMP threads are far slower)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_finetune.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"settings": vars(args), "machine": machine_info(), "versions": library_versions(),
                               "load_start": os.getloadavg(), "types": {}}
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        data_file = fitting_examples(args, Path(tmp))
        for k, ft_type in enumerate(args.types.split(",")):
            cfg = FinetuneConfig.from_dict({
                "type": ft_type, "data": str(data_file), "max_steps": args.steps, "batch_size": args.batch_size,
                "max_length": args.max_length, "warmup_steps": 1, "max_examples": args.steps * args.batch_size,
            })
            runners = [("editdecay", run_editdecay), ("hf_trainer", run_hf_trainer)]
            if k % 2:
                runners.reverse()
            row = {}
            for name, fn in runners:
                start = time.perf_counter()
                row[name] = fn(args.model, cfg, Path(tmp))
                row[name]["wall_s"] = time.perf_counter() - start
                print(f"  {ft_type:<5} {name:<10} median {row[name]['median_tokens_per_s']:.1f} tok/s, "
                      f"{row[name]['median_tokens_per_cpu_s']:.1f} tok/cpu-s", flush=True)
            assert row["editdecay"]["tokens"] == row["hf_trainer"]["tokens"], "the loops saw different batches"
            row["max_loss_difference"] = max(abs(a - b) for a, b in zip(row["editdecay"]["losses"],
                                                                         row["hf_trainer"]["losses"], strict=True))
            row["speedup"] = row["editdecay"]["median_tokens_per_s"] / row["hf_trainer"]["median_tokens_per_s"]
            row["cpu_speedup"] = (row["editdecay"]["median_tokens_per_cpu_s"]
                                  / row["hf_trainer"]["median_tokens_per_cpu_s"])
            results["types"][ft_type] = row
    results["load_end"] = os.getloadavg()
    print(f"\nSmolLM2-135M, {args.steps} steps x batch {args.batch_size} x max_length {args.max_length}, "
          f"{args.threads} thread(s); median tokens/s over steps 2..{args.steps}")
    print("(wall: tokens per wall-clock second; cpu: tokens per CPU-second of this process, which other load on a "
          "shared machine disturbs less)")
    print(f"{'type':<6} {'wall ours':>10} {'wall HF':>9} {'speedup':>8} {'cpu ours':>9} {'cpu HF':>8} {'speedup':>8}")
    for ft_type, row in results["types"].items():
        ours, hf = row["editdecay"], row["hf_trainer"]
        print(f"{ft_type:<6} {ours['median_tokens_per_s']:>10.1f} {hf['median_tokens_per_s']:>9.1f} "
              f"{row['speedup']:>7.2f}x {ours['median_tokens_per_cpu_s']:>9.1f} {hf['median_tokens_per_cpu_s']:>8.1f} "
              f"{row['cpu_speedup']:>7.2f}x")
    print("max |loss difference| per step between the loops (same batches, same update rule): "
          + ", ".join(f"{t} {row['max_loss_difference']:.2g}" for t, row in results["types"].items()))
    print(f"load average: start {results['load_start'][0]:.1f}, end {results['load_end'][0]:.1f}")
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
