"""Commonsense downstream accuracy (LLM-Adapters test sets, the study's downstream score).

Two modes:

- ``loglik`` (default): the prompt is the Alpaca prompt of the item's instruction followed by
  ``"the correct answer is"`` (the LLM-Adapters response format); each answer label (``" answer1"``,
  ``" true"``, ...) is scored as a continuation through :mod:`editdecay.evaluate.scoring` and the label with
  the highest total log-probability is the prediction. Labels that differ only in their final token (all of
  LLM-Adapters' labels on BPE tokenizers) share one sequence (:func:`scoring.score_alternatives`).
- ``generate`` (the study's mode): greedy generation from the Alpaca prompt, then the first occurrence of one
  of the item's labels in the generated text is the prediction (LLM-Adapters' ``extract_answer``); no label
  found counts as wrong.

``limit`` evaluates a seeded random sample of that many items per task.
"""

from __future__ import annotations

import random
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from editdecay.data.corpora import COMMONSENSE_TASKS, MCItem, alpaca_prompt, canonical_task, load_commonsense
from editdecay.data.tokens import continuation, pad_token_id
from editdecay.errors import ConfigError
from editdecay.evaluate.scoring import score_alternatives

ANSWER_PREFIX = "the correct answer is"
MODES = ("loglik", "generate")


def resolve_tasks(tasks: str | Sequence[str]) -> list[str]:
    """'commonsense' -> all seven tasks; 'boolq,piqa' or a list -> those tasks (aliases accepted)."""
    if isinstance(tasks, str):
        if tasks == "commonsense":
            return list(COMMONSENSE_TASKS)
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if not tasks:
        raise ConfigError("no downstream tasks given; use 'commonsense' or task names")
    return [canonical_task(t) for t in tasks]


def sample_items(items: list[MCItem], limit: int | None, seed: int) -> list[MCItem]:
    """A seeded random subset of ``limit`` items (in file order), or all items."""
    if limit is None or limit >= len(items):
        return items
    if limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def loglik_prompt(item: MCItem) -> str:
    return alpaca_prompt(item.instruction) + ANSWER_PREFIX


def predict_loglik(model: nn.Module, tok: Any, items: Sequence[MCItem], batch_size: int = 16,
                   progress: bool = False) -> list[str]:
    """The label with the highest total log-probability after the answer prefix, for each item (ties: first)."""
    groups = [(loglik_prompt(it), [continuation(lab) for lab in it.labels]) for it in items]
    scores = score_alternatives(model, tok, groups, batch_size=batch_size, progress=progress, desc="downstream")
    return [it.labels[int(np.argmax([s.total_logprob for s in row]))] for it, row in zip(items, scores, strict=True)]


def extract_label(text: str, labels: Sequence[str]) -> str | None:
    """The first of ``labels`` occurring in ``text`` (longest label first at a position), else None."""
    pattern = "|".join(re.escape(lab) for lab in sorted(labels, key=len, reverse=True))
    match = re.search(pattern, text)
    return match.group(0) if match else None


def predict_generate(model: nn.Module, tok: Any, items: Sequence[MCItem], batch_size: int = 8,
                     max_new_tokens: int = 32, progress: bool = False) -> list[str | None]:
    """Greedy generation from the Alpaca prompt, then the first label in the generated text."""
    import torch

    from editdecay.evaluate.scoring import model_device

    device = model_device(model)
    preds: list[str | None] = []
    old_side = tok.padding_side
    tok.padding_side = "left"
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc="downstream (generate)", file=sys.stderr, unit="item")
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            enc = tok([alpaca_prompt(it.instruction) for it in chunk], return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=pad_token_id(tok))
            for it, row in zip(chunk, out[:, enc["input_ids"].shape[1]:], strict=True):
                preds.append(extract_label(tok.decode(row, skip_special_tokens=True), it.labels))
            if bar is not None:
                bar.update(len(chunk))
    finally:
        tok.padding_side = old_side
        if bar is not None:
            bar.close()
        if was_training:
            model.train()
    return preds


def evaluate_commonsense(
    model: nn.Module,
    tok: Any,
    tasks: str | Sequence[str] = "commonsense",
    limit: int | None = None,
    seed: int = 0,
    mode: str = "loglik",
    batch_size: int = 16,
    progress: bool = False,
    items_by_task: dict[str, list[MCItem]] | None = None,
) -> dict[str, Any]:
    """Accuracy per task and the unweighted mean over tasks (the study's downstream score).

    ``items_by_task`` replaces loading from the shared data (tests, custom sets).
    """
    if mode not in MODES:
        raise ConfigError(f"unknown downstream mode {mode!r}; use one of {', '.join(MODES)}")
    names = list(items_by_task) if items_by_task is not None else resolve_tasks(tasks)
    accs: dict[str, float] = {}
    counts: dict[str, int] = {}
    for task in names:
        items = items_by_task[task] if items_by_task is not None else load_commonsense(task)
        items = sample_items(items, limit, seed)
        if mode == "loglik":
            preds: Sequence[str | None] = predict_loglik(model, tok, items, batch_size=batch_size, progress=progress)
        else:
            preds = predict_generate(model, tok, items, batch_size=batch_size, progress=progress)
        correct = [p == it.answer for p, it in zip(preds, items, strict=True)]
        accs[task] = float(np.mean(correct))
        counts[task] = len(items)
    return {"tasks": accs, "mean": float(np.mean(list(accs.values()))), "n": counts, "mode": mode,
            "limit": limit, "seed": seed}
