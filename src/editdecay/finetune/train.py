"""The training loop: plain PyTorch (no Trainer), resumable, with the decay tracker called along the way.

Why not the Hugging Face Trainer: on CPU its per-step overhead (accelerate wrapping, callbacks, logging,
data-loader workers) is a visible share of a 135M-parameter step, and its checkpoints are pickles. This loop
does one thing: token-weighted cross-entropy on the response tokens of ``grad_accum`` micro-batches, AdamW,
warmup + linear/cosine decay, clipping. The loss of one optimizer step is the mean over every loss token of
its micro-batches (not a mean of per-micro-batch means), so accumulation gives the same update as one big
batch.

A checkpoint holds the trained tensors, AdamW's moments, the torch RNG state and the step, written with
safetensors + JSON into one folder that is swapped in atomically. Resuming rebuilds the learning rate from
the step and the data order from (seed, step), so an interrupted run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editdecay.artifacts import TRAIN_LOG as LOG
from editdecay.data.records import records_hash
from editdecay.errors import ConfigError, NumericalError
from editdecay.finetune.config import FinetuneConfig
from editdecay.finetune.data import IGNORE_INDEX, TrainData
from editdecay.finetune.precision import MasterWeights
from editdecay.models.arch import _get, get_adapter
from editdecay.util.io import atomic_dir, atomic_write_json, atomic_write_text, dumps, read_json

CHECKPOINT = "checkpoint"


def lr_at(step: int, total: int, warmup: int, base: float, schedule: str) -> float:
    """Learning rate for optimizer step ``step`` (0-based), as transformers' schedulers define it.

    warmup: ``base * step / warmup``; then linear: ``base * (total - step) / (total - warmup)``, cosine:
    ``base * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))``, constant: ``base``.
    """
    if step < warmup:
        return base * step / max(1, warmup)
    if schedule == "constant":
        return base
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return base * max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return base * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ConfigError(f"fine-tuning setting 'schedule' = {schedule!r}: use linear, cosine or constant")


def total_steps(cfg: FinetuneConfig, data: TrainData) -> int:
    """Optimizer steps: ``max_steps`` if set, else ``epochs`` passes over the data."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_epoch = math.ceil(data.batches_per_epoch / cfg.grad_accum)
    return max(1, math.ceil(cfg.epochs * per_epoch))


def warmup_steps(cfg: FinetuneConfig, total: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * total)


@contextmanager
def loss_positions_only(unembed: nn.Module, labels: torch.Tensor):
    """While active, the unembedding sees only the hidden states whose next token carries a label.

    The loss needs logits only at those positions; with response-only loss on commonsense data that is ~10%
    of them, and the unembedding (d x vocab, 49k rows on SmolLM2) is a fifth of a small model's forward and
    its logits the largest activation. Yields the targets in the same (row-major) order as the logits.
    """
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    targets = labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]

    def pre_hook(module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        return (hidden[keep.to(hidden.device)].unsqueeze(0), *args[1:])

    handle = unembed.register_forward_pre_hook(pre_hook)
    try:
        yield targets
    finally:
        handle.remove()


def build_optimizer(named: list[tuple[str, nn.Parameter]], cfg: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (biases, norms and DoRA magnitudes are vectors)."""
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    # the fused kernel (CPU and CUDA since torch 2.4) is ~6x faster than the per-tensor loop on CPU: 0.06 vs
    # 0.38 s per step for SmolLM2's 106M projection weights on one thread
    devices = {p.device.type for _, p in named}
    fused = devices <= {"cpu", "cuda"} and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16)
                                                for _, p in named)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                             fused=fused)


@dataclass
class TrainResult:
    steps: int
    tokens: int
    loss_tokens: int
    train_seconds: float
    resumed_from: int
    final_loss: float | None
    log: list[dict[str, Any]] = field(default_factory=list)


class DecayTracker:
    """Scores the tracked edit records (and optionally a downstream sample) at chosen steps -> trajectory.json."""

    def __init__(self, records: list, tokenizer, path: Path, downstream_tasks: list[str] | None = None,
                 downstream_n: int = 20, start_cache: Path | None = None) -> None:
        self.records = records
        self.tokenizer = tokenizer
        self.path = Path(path)
        self.downstream_tasks = list(downstream_tasks or [])
        self.downstream_n = downstream_n
        # step 0 scores the model training starts from: fine-tunes of the same model share that point (a file
        # named by what determines it, see finetune.api.start_point_file) instead of each scoring it again
        self.start_cache = Path(start_cache) if start_cache is not None else None
        self.points: list[dict[str, Any]] = read_json(self.path) if self.path.exists() else []
        self.last_scores: dict[str, Any] | None = None  # the per-record rows of the last step scored here

    def steps(self) -> list[int]:
        return [p["step"] for p in self.points]

    def truncate(self, step: int) -> None:
        """Forget points after ``step`` (they belong to the part of an interrupted run that is redone)."""
        self.points = [p for p in self.points if p["step"] <= step]
        atomic_write_json(self.path, self.points)

    def evaluate(self, model: nn.Module, step: int, tokens: int | None = None) -> dict[str, Any]:
        """Score the tracked edits at ``step``; ``tokens``: training tokens seen so far (the dose of fine-tuning)."""
        from editdecay.evaluate.api import evaluate_edits

        if step == 0 and self.start_cache is not None and self.start_cache.exists():
            point = {**read_json(self.start_cache), "step": 0}
            if tokens is not None:
                point["tokens"] = tokens
            return self._keep(point)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                result = evaluate_edits(model, self.tokenizer, self.records)
                param = next(model.parameters())
                self.last_scores = {"step": step, "records_hash": records_hash(self.records),
                                    "dtype": str(param.dtype).replace("torch.", ""), "device": param.device.type,
                                    "summary": result["summary"], "records": result["records"]}
                point: dict[str, Any] = {"step": step}
                if tokens is not None:
                    point["tokens"] = tokens
                point.update({k: v for k, v in result["summary"].items() if isinstance(v, (int, float))})
                if self.downstream_tasks:
                    from editdecay.evaluate.api import evaluate_downstream

                    down = evaluate_downstream(model, self.tokenizer, tasks=self.downstream_tasks,
                                               limit=self.downstream_n)
                    point["downstream_mean"] = down["mean"]
                    point["downstream"] = down["tasks"]
        finally:
            model.train(was_training)
        if step == 0 and self.start_cache is not None:
            self.start_cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.start_cache, point)
        return self._keep(point)

    def final_scores(self, step: int) -> dict[str, Any] | None:
        """The per-record scores of ``step`` (the last one) when they were computed in this process, else None
        (a resumed run that had scored its last step before the interruption keeps only the summary): the
        evaluation of the finished model reuses them instead of scoring the same records on the same weights."""
        return self.last_scores if self.last_scores is not None and self.last_scores["step"] == step else None

    def _keep(self, point: dict[str, Any]) -> dict[str, Any]:
        self.points = [p for p in self.points if p["step"] != point["step"]] + [point]
        atomic_write_json(self.path, self.points)
        return point


# ----------------------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(work_dir: Path, named: list[tuple[str, nn.Parameter]], optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> None:
    """Trained tensors + AdamW moments + RNG (safetensors) and the step counters (JSON), swapped in atomically."""
    from safetensors.torch import save_file

    index = {id(p): i for i, (_, p) in enumerate(named)}
    opt_tensors: dict[str, torch.Tensor] = {}
    for param, pstate in optimizer.state.items():
        i = index[id(param)]
        for key, value in pstate.items():
            if torch.is_tensor(value):
                opt_tensors[f"{i}.{key}"] = value.detach().cpu().contiguous()
    with atomic_dir(work_dir / CHECKPOINT) as tmp:
        save_file({n: p.detach().cpu().contiguous() for n, p in named}, str(tmp / "trainable.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        atomic_write_json(tmp / "state.json", {**state, "param_names": [n for n, _ in named]})


def load_checkpoint(work_dir: Path, named: list[tuple[str, nn.Parameter]], optimizer: torch.optim.Optimizer
                    ) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote into the live parameters and optimizer; return the counters."""
    from safetensors.torch import load_file

    folder = work_dir / CHECKPOINT
    state = read_json(folder / "state.json")
    names = [n for n, _ in named]
    if state["param_names"] != names:
        raise ConfigError(
            f"checkpoint in {folder} trains different parameters than this run ({len(state['param_names'])} vs "
            f"{len(names)}); pass overwrite=True (--overwrite) to start again"
        )
    tensors = load_file(str(folder / "trainable.safetensors"))
    with torch.no_grad():
        for name, param in named:
            param.copy_(tensors[name].to(param.device))
    opt_tensors = load_file(str(folder / "optimizer.safetensors"))
    opt_state = optimizer.state_dict()
    # the checkpoint numbers parameters in ``named`` order; the optimizer's state_dict numbers them in its
    # param-group order (matrices first, then vectors such as DoRA's magnitudes): translate by identity
    slot = {id(p): i for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"])}
    restored: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in opt_tensors.items():
        i, sub = key.split(".", 1)
        name, param = named[int(i)]
        if sub in ("exp_avg", "exp_avg_sq") and value.shape != param.shape:
            raise ConfigError(f"checkpoint in {folder}: optimizer state {sub} of {name} has shape "
                              f"{tuple(value.shape)}, the parameter {tuple(param.shape)}; pass overwrite=True "
                              "(--overwrite) to start again")
        restored.setdefault(slot[id(param)], {})[sub] = value
    opt_state["state"] = restored
    optimizer.load_state_dict(opt_state)
    torch.set_rng_state(load_file(str(folder / "rng.safetensors"))["torch"])
    return state


def _trim_log(path: Path, step: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r["step"] <= step]
    atomic_write_text(path, "".join(dumps(r, indent=None) + "\n" for r in rows))
    return rows


# ----------------------------------------------------------------------------------------------------------
# the loop


def train(
    model: nn.Module,
    data: TrainData,
    cfg: FinetuneConfig,
    work_dir: Path,
    *,
    eval_model: nn.Module | None = None,
    tracker: DecayTracker | None = None,
    progress: bool = True,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
    after_update: Callable[[Callable[[nn.Parameter], torch.Tensor]], None] | None = None,
) -> TrainResult:
    """Train ``model``'s parameters that require grad; resume from ``work_dir/checkpoint`` if it is there.

    ``eval_model`` is what the tracker scores (the transformers model with any adapters injected);
    ``on_step(step, log_row)`` runs after each optimizer step (tests use it to interrupt a run).
    ``after_update(resolve)`` runs right after each ``optimizer.step()``, before the step is logged, tracked or
    checkpointed (preserve's null-space projection); ``resolve(param)`` is the tensor the optimizer updates for
    a model parameter (its float32 master for bf16 weights, else the parameter itself).
    """
    from tqdm.auto import tqdm

    work_dir = Path(work_dir)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError("nothing to train: the layer/module selection matched no parameters")
    master = MasterWeights(named)  # bf16 weights train through float32 masters (finetune/precision.py)
    named = master.named
    masters = {id(p): m for p, m in master.pairs}
    params = [p for _, p in named]
    device = params[0].device
    unembed = _get(eval_model or model, get_adapter(eval_model or model).unembed)
    optimizer = build_optimizer(named, cfg)
    total = total_steps(cfg, data)
    warmup = warmup_steps(cfg, total)
    log_path = work_dir / LOG

    start, tokens, loss_tokens, train_seconds = 0, 0, 0, 0.0
    if (work_dir / CHECKPOINT / "state.json").exists():
        state = load_checkpoint(work_dir, named, optimizer)
        master.master_to_model()
        start, tokens = state["step"], state["tokens"]
        loss_tokens, train_seconds = state["loss_tokens"], state["train_seconds"]
        print(f"[editdecay] resuming fine-tuning at step {start}/{total} from {work_dir / CHECKPOINT}",
              file=sys.stderr)
    log = _trim_log(log_path, start)
    if start > total:
        raise ConfigError(f"the checkpoint in {work_dir} is at step {start}, past this run's {total} steps")
    if tracker is not None:
        tracker.truncate(start)
        if start == 0:
            tracker.evaluate(eval_model or model, 0, tokens=0)

    def counters(step: int) -> dict[str, Any]:
        return {"step": step, "tokens": tokens, "loss_tokens": loss_tokens, "train_seconds": train_seconds}

    model.train()
    bar = tqdm(total=total, initial=start, desc=f"finetune {cfg.type}", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    completed, updating = start, False
    try:
        with log_path.open("a", encoding="utf-8") as log_file:
            for step in range(start, total):
                t0 = time.perf_counter()
                micro = [data.batch(step * cfg.grad_accum + k) for k in range(cfg.grad_accum)]
                indices = [i for k in range(cfg.grad_accum) for i in data.indices(step * cfg.grad_accum + k)]
                n_loss = int(sum((b["labels"][:, 1:] != IGNORE_INDEX).sum() for b in micro))
                n_tok = int(sum(b["attention_mask"].sum() for b in micro))
                lr = lr_at(step, total, warmup, cfg.learning_rate, cfg.schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                step_loss = 0.0
                if n_loss:
                    for batch in micro:
                        batch = {k: v.to(device) for k, v in batch.items()}
                        with loss_positions_only(unembed, batch["labels"]) as targets:
                            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                        loss = nn.functional.cross_entropy(logits[0].float(), targets, reduction="sum") / n_loss
                        loss.backward()
                        step_loss += float(loss.detach())
                    if not math.isfinite(step_loss):
                        resumed = (f"; this run resumed at step {start} from {work_dir / CHECKPOINT}: if the loss "
                                   "was finite before, start again with overwrite=True (--overwrite)") if start else ""
                        raise NumericalError(f"fine-tuning loss is {step_loss} at step {step + 1}; lower the lr"
                                             + resumed)
                    master.grads_to_master()
                    if cfg.max_grad_norm is not None:
                        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                    else:
                        grad_norm = float(torch.linalg.vector_norm(
                            torch.stack([p.grad.norm() for p in params if p.grad is not None])))
                    updating = True
                    optimizer.step()
                    if after_update is not None:
                        after_update(lambda p: masters.get(id(p), p))
                    master.master_to_model()
                    optimizer.zero_grad(set_to_none=True)
                else:  # every example of this step was cut inside its prompt: nothing to learn from
                    grad_norm = 0.0
                    step_loss = float("nan")
                seconds = time.perf_counter() - t0
                completed = step + 1
                tokens += n_tok
                loss_tokens += n_loss
                train_seconds += seconds
                updating = False
                row = {"step": completed, "loss": step_loss, "lr": lr, "grad_norm": grad_norm, "tokens": n_tok,
                       "loss_tokens": n_loss, "tokens_per_s": n_tok / seconds if seconds > 0 else None,
                       "seconds": seconds, "examples": indices}
                log.append(row)
                log_file.write(dumps(row, indent=None) + "\n")
                log_file.flush()
                bar.update(1)
                if completed % cfg.log_every == 0 or completed == total:
                    bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens / train_seconds:.0f}")
                if tracker is not None and ((cfg.eval_every and completed % cfg.eval_every == 0) or completed == total):
                    tracker.evaluate(eval_model or model, completed, tokens=tokens)
                if completed % cfg.checkpoint_every == 0 and completed < total:
                    save_checkpoint(work_dir, named, optimizer, counters(completed))
                if on_step is not None:
                    on_step(completed, row)
    except KeyboardInterrupt:
        if not updating and completed > start:  # parameters and optimizer agree on `completed`: keep them
            save_checkpoint(work_dir, named, optimizer, counters(completed))
            print(f"[editdecay] interrupted: saved a checkpoint at step {completed}", file=sys.stderr)
        raise
    finally:
        bar.close()
    model.eval()
    if completed > start and loss_tokens == 0:
        raise ConfigError(
            f"fine-tuning trained on nothing: in all {completed} steps every example was cut inside its prompt at "
            f"max_length={cfg.max_length}, so no response token carried a loss; raise max_length"
        )
    losses = [r["loss"] for r in log if math.isfinite(r["loss"])]
    return TrainResult(steps=completed, tokens=tokens, loss_tokens=loss_tokens, train_seconds=train_seconds,
                       resumed_from=start, final_loss=losses[-1] if losses else None, log=log)
