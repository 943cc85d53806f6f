"""THE batched path from (prompt, continuation) pairs to per-token log-probabilities.

Every metric in this package (edit efficacy, paraphrase, neighbourhood, downstream log-likelihood) goes
through :func:`score_continuations`, so batching, padding, BOS handling and numerical care live in one place.

Tokenisation: the prompt and the continuation are tokenised separately and their ids concatenated, so the
scored target tokens are exactly ``tok(continuation, add_special_tokens=False)`` whatever the prompt is; the
prompt gets whatever special tokens the tokenizer puts in front of a text (a BOS for Llama-2/Gemma style
tokenizers, nothing for GPT-2/SmolLM2). Sequences are sorted by length, right-padded, and run one forward
per batch; only the logits at target positions are turned into log-probabilities. The tokenisation rules
(``continuation``, ``special_prefix``) live in :mod:`editdecay.data.tokens`, shared with the editor, and are
re-exported here.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from editdecay.data.tokens import continuation, pad_token_id, special_prefix  # noqa: F401 - continuation is re-exported
from editdecay.errors import ConfigError, DataError


@dataclass(frozen=True)
class TokenScores:
    """Scores of one continuation: its token ids, their log-probs, and whether each was the top-1 token."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    is_argmax: tuple[bool, ...]
    candidate_logprobs: tuple[float, ...] = ()  # log-probs of requested alternatives at the last target position
    candidate_is_argmax: tuple[bool, ...] = ()

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def total_logprob(self) -> float:
        return float(sum(self.logprobs))

    @property
    def mean_nll(self) -> float:
        """Mean per-token negative log-likelihood: the quantity ROME/MEMIT compare between targets."""
        return -self.total_logprob / len(self.logprobs)

    @property
    def all_argmax(self) -> bool:
        """True when every target token is the model's top-1 prediction under teacher forcing."""
        return all(self.is_argmax)

    @property
    def token_accuracy(self) -> float:
        """Fraction of target tokens that are top-1 (MEMIT's zsRE accuracy for one prompt)."""
        return sum(self.is_argmax) / len(self.is_argmax)


def tokenize_pairs(tok: Any, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids with the tokenizer's prefix specials, continuation ids without any) for each pair."""
    if not pairs:
        return []
    prefix = special_prefix(tok)
    prompts = [p for p, _ in pairs]
    conts = [c for _, c in pairs]
    prompt_ids = tok(prompts, add_special_tokens=False)["input_ids"]
    cont_ids = tok(conts, add_special_tokens=False)["input_ids"]
    out = []
    for i, (p_ids, c_ids) in enumerate(zip(prompt_ids, cont_ids, strict=True)):
        full_prompt = prefix + list(p_ids)
        if not full_prompt:
            raise DataError("<pairs>", f"prompt {prompts[i]!r} has no tokens and the tokenizer adds no BOS, so the "
                            "first continuation token has nothing to condition on", i, "prompt")
        if not c_ids:
            raise DataError("<pairs>", f"continuation {conts[i]!r} has no tokens", i, "continuation")
        out.append((full_prompt, list(c_ids)))
    return out


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether ``model(..., logits_to_keep=tensor)`` reaches a forward that slices logits (HF causal LMs do;
    wrappers such as PEFT's pass ``**kwargs`` through to the model they wrap)."""
    seen = 0
    while seen < 8:
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            return False
        if "logits_to_keep" in params:
            return True
        passes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        inner = model.get_base_model() if hasattr(model, "get_base_model") else None
        if not passes_kwargs or inner is None or inner is model:
            return False
        model, seen = inner, seen + 1
    return False


def model_device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


@torch.no_grad()
def score_token_ids(
    model: nn.Module,
    items: Sequence[tuple[list[int], list[int]]],
    batch_size: int = 32,
    pad_id: int = 0,
    progress: bool = False,
    desc: str = "scoring",
    candidates: Sequence[Sequence[int]] | None = None,
) -> list[TokenScores]:
    """Score pre-tokenised (prompt ids, target ids) items; results in input order.

    The last target token is never fed to the model (nothing is predicted from it). The model is put in
    eval mode for the call (dropout off) and restored afterwards, so a training loop can call this.
    ``candidates[i]`` (optional) lists token ids whose log-probs at item i's last target position are returned
    too: choices that differ only in their final token then cost one sequence instead of one each.
    """
    if candidates is not None and len(candidates) != len(items):
        raise ConfigError(f"candidates has {len(candidates)} entries for {len(items)} items")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    results: list[TokenScores | None] = [None] * len(items)
    if not items:
        return []
    order = sorted(range(len(items)), key=lambda i: -(len(items[i][0]) + len(items[i][1])))
    device = model_device(model)
    keep_ok = _accepts_logits_to_keep(model)
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=desc, file=sys.stderr, unit="seq")
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            seqs = [items[i][0] + items[i][1][:-1] for i in chunk]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            rows, cols, targets = [], [], []
            for r, (i, seq) in enumerate(zip(chunk, seqs, strict=True)):
                ids[r, :len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[r, :len(seq)] = 1
                p_len, t_ids = len(items[i][0]), items[i][1]
                rows.extend([r] * len(t_ids))
                cols.extend(range(p_len - 1, p_len - 1 + len(t_ids)))
                targets.extend(t_ids)
            rows_t = torch.tensor(rows, dtype=torch.long, device=device)
            cols_t = torch.tensor(cols, dtype=torch.long)
            kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
            keep = torch.unique(cols_t)  # sorted union of the positions any row needs
            if keep_ok:
                kwargs["logits_to_keep"] = keep.to(device)
            logits = model(**kwargs).logits
            if keep_ok and logits.shape[1] == keep.numel():
                lookup = torch.full((width,), -1, dtype=torch.long)
                lookup[keep] = torch.arange(keep.numel())
                cols_t = lookup[cols_t]
            elif logits.shape[1] != width:
                raise ConfigError(f"model returned logits for {logits.shape[1]} positions, expected {width} "
                                  f"or {keep.numel()}")
            picked = logits[rows_t, cols_t.to(device)].float()  # [n_target_tokens, vocab]
            targets_t = torch.tensor(targets, dtype=torch.long, device=device)
            logprobs = picked.gather(1, targets_t[:, None])[:, 0] - torch.logsumexp(picked, dim=-1)
            is_top = picked.argmax(dim=-1) == targets_t
            if not torch.isfinite(logprobs).all():
                from editdecay.errors import NumericalError

                raise NumericalError("non-finite log-probabilities while scoring; the model weights may hold NaN/inf")
            lp, top = logprobs.cpu().tolist(), is_top.cpu().tolist()
            offset = 0
            for i in chunk:
                n = len(items[i][1])
                alt: tuple[float, ...] = ()
                alt_top: tuple[bool, ...] = ()
                if candidates is not None and candidates[i]:
                    row = picked[offset + n - 1]
                    cand = torch.tensor(list(candidates[i]), dtype=torch.long, device=device)
                    alt = tuple((row[cand] - torch.logsumexp(row, dim=-1)).cpu().tolist())
                    alt_top = tuple((cand == row.argmax()).cpu().tolist())
                results[i] = TokenScores(tuple(items[i][1]), tuple(lp[offset:offset + n]),
                                         tuple(top[offset:offset + n]), alt, alt_top)
                offset += n
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        if was_training:
            model.train()
    return [r for r in results if r is not None]


def score_continuations(
    model: nn.Module,
    tok: Any,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "scoring",
) -> list[TokenScores]:
    """Per-token log-probs of each continuation given its prompt, batched; results in input order."""
    items = tokenize_pairs(tok, pairs)
    pad_id = pad_token_id(tok)
    return score_token_ids(model, items, batch_size=batch_size, pad_id=pad_id, progress=progress, desc=desc)


def score_alternatives(
    model: nn.Module,
    tok: Any,
    groups: Sequence[tuple[str, Sequence[str]]],
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "scoring",
) -> list[list[TokenScores]]:
    """Scores of several continuations of the same prompt: ``groups`` = [(prompt, [cont, ...])].

    Exactly :func:`score_continuations` on every (prompt, cont) pair, but continuations whose token ids agree
    up to their last token share one sequence (their last tokens are read from the same distribution), so
    single-token alternatives such as CounterFact's new/true objects or answer labels cost one forward row.
    """
    flat = [(prompt, cont) for prompt, conts in groups for cont in conts]
    tokenized = tokenize_pairs(tok, flat)
    items: list[tuple[list[int], list[int]]] = []
    cands: list[list[int]] = []
    plan: list[list[tuple[int, int]]] = []  # per group, per continuation: (item index, candidate index)
    k = 0
    for _, conts in groups:
        by_prefix: dict[tuple[int, ...], int] = {}
        placement = []
        for _ in conts:
            p_ids, c_ids = tokenized[k]
            k += 1
            key = tuple(c_ids[:-1])
            if key not in by_prefix or c_ids[-1] in cands[by_prefix[key]]:
                by_prefix[key] = len(items)
                items.append((p_ids, c_ids))
                cands.append([])
            item = by_prefix[key]
            cands[item].append(c_ids[-1])
            placement.append((item, len(cands[item]) - 1))
        plan.append(placement)
    pad_id = pad_token_id(tok)
    scores = score_token_ids(model, items, batch_size=batch_size, pad_id=pad_id, progress=progress, desc=desc,
                             candidates=cands)
    out = []
    for placement in plan:
        row = []
        for item, c in placement:
            s = scores[item]
            row.append(TokenScores(s.token_ids[:-1] + (cands[item][c],), s.logprobs[:-1] + (s.candidate_logprobs[c],),
                                   s.is_argmax[:-1] + (s.candidate_is_argmax[c],)))
        out.append(row)
    return out


def prob(nll: float) -> float:
    """exp(-NLL): the per-token geometric-mean probability ROME's magnitudes compare."""
    return math.exp(-nll)
