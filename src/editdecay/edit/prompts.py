"""Requests and their prompts, tokenised the way the scorer tokenises them.

An edit starts here: a :class:`Request` is what the editor needs from an :class:`EditRecord`; the
:class:`Encoder` tokenises a prompt with the tokenizer's prefix specials and finds the subject's last token;
:func:`context_templates` makes MEMIT's context prefixes (``"{}"`` plus short texts the model generates itself
from "The", "Therefore", "Because", "I", "You", top-k 5 sampling, seeded, each followed by ``". {}"``).
:class:`SubjectPrompts` (every request × template, for the keys) and :class:`ZBatch` (the same prompts followed
by the target, plus the KL prompt, for the target values) are the two tokenised batches the pipeline runs.

Targets are tokenised as continuations (:mod:`editdecay.data.tokens`) exactly as the scorer does: prompt ids
(with the tokenizer's prefix specials) followed by the target's ids without specials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from editdecay.data.records import EditRecord
from editdecay.data.tokens import continuation, pad_token_id, special_prefix
from editdecay.edit.hooks import model_device
from editdecay.errors import ConfigError, DataError, NumericalError

CONTEXT_PROMPTS = ("The", "Therefore", "Because", "I", "You")
KL_PROMPT = "{} is a"


@dataclass(frozen=True)
class Request:
    """One fact to write: what the core needs from an :class:`EditRecord`."""

    case_id: str
    subject: str
    prompt: str  # template with one "{}" for the subject
    target: str  # as stored in the record (no leading space)

    @classmethod
    def from_record(cls, record: EditRecord) -> Request:
        if "{}" not in record.prompt:
            raise DataError(str(record.case_id), "prompt has no '{}' for the subject", field="prompt")
        if not record.subject.strip():
            raise DataError(str(record.case_id), "subject is empty", field="subject")
        if not record.target_new.strip():
            raise DataError(str(record.case_id), "target_new is empty", field="target_new")
        return cls(str(record.case_id), record.subject, record.prompt, record.target_new)


def request_names(requests: Sequence[Request], idx: Sequence[int] | None = None, limit: int = 5) -> str:
    chosen = [requests[i] for i in (idx if idx is not None else range(len(requests)))]
    text = ", ".join(f"{r.case_id} ({r.subject!r})" for r in chosen[:limit])
    return text + (f" and {len(chosen) - limit} more" if len(chosen) > limit else "")


class Encoder:
    """Tokenises prompts the way the scorer does and finds the subject's last token."""

    def __init__(self, tok: Any):
        self.tok = tok
        self.prefix = special_prefix(tok)
        self.fast = bool(getattr(tok, "is_fast", False))

    def target_ids(self, target: str) -> list[int]:
        ids = list(self.tok(continuation(target), add_special_tokens=False)["input_ids"])
        if not ids:
            raise DataError("<target>", f"target {target!r} has no tokens")
        return ids

    def encode_with_subject(self, before: str, subject: str, after: str) -> tuple[list[int], int]:
        """Token ids of ``before + subject + after`` (with the prefix specials) and the subject's last index."""
        text = before + subject + after
        start, end = len(before), len(before) + len(subject)
        if self.fast:
            enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
            last = -1
            for i, (s, e) in enumerate(offsets):
                if s < end and e > start:
                    last = i
            if last < 0:
                raise DataError("<prompt>", f"subject {subject!r} not found among the tokens of {text!r}")
        else:
            ids = list(self.tok(text, add_special_tokens=False)["input_ids"])
            last = len(self.tok(text[:end], add_special_tokens=False)["input_ids"]) - 1
            if last < 0:
                raise DataError("<prompt>", f"subject {subject!r} has no tokens in {text!r}")
        return self.prefix + ids, len(self.prefix) + last


def _split_template(template: str) -> tuple[str, str]:
    if template.count("{}") != 1:
        raise ConfigError(f"context template must contain exactly one '{{}}': {template!r}")
    before, after = template.split("{}")
    return before, after


def fill_parts(context: str, prompt: str) -> tuple[str, str]:
    """Text before and after the subject when ``prompt`` is put into the context template."""
    c_before, c_after = _split_template(context)
    p_before, p_after = prompt.split("{}", 1)
    return c_before + p_before, p_after + c_after


def context_templates(model: nn.Module, tok: Any, length_params: Sequence[Sequence[int]] = ((10, 5),),
                      seed: int = 0) -> list[list[str]]:
    """``[["{}"], [generated + ". {}", ...], ...]``: one group per ``(max_tokens, count)``.

    Each generated text is sampled (top-k 5) from the model, starting from "The", "Therefore", "Because",
    "I", "You" in turn, ``max_tokens`` tokens long including that word, as MEMIT's ``generate_fast``.
    Seeded and run with a private RNG state, so the global torch RNG is left as it was.
    """
    groups: list[list[str]] = [["{}"]]
    enc = Encoder(tok)
    device = model_device(model)
    pad_id = pad_token_id(tok)
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]), torch.no_grad():
        torch.manual_seed(seed)
        for length, count in length_params:
            group = []
            for j in range(int(count)):
                word = CONTEXT_PROMPTS[j % len(CONTEXT_PROMPTS)]
                ids = enc.prefix + list(tok(word, add_special_tokens=False)["input_ids"])
                n_new = max(1, int(length) - (len(ids) - len(enc.prefix)))
                input_ids = torch.tensor([ids], device=device)
                try:
                    out = model.generate(
                        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True, top_k=5,
                        top_p=1.0, temperature=1.0, num_beams=1, max_new_tokens=n_new, min_new_tokens=n_new,
                        pad_token_id=pad_id, use_cache=True,
                    )
                except RuntimeError as exc:
                    if "inf" in str(exc) or "nan" in str(exc):
                        raise NumericalError(f"generating the context templates: the model's probabilities hold "
                                             f"NaN/inf ({exc}); its weights may be corrupt") from None
                    raise
                text = tok.decode(out[0, len(enc.prefix):], skip_special_tokens=True)
                text = text.replace("{", " ").replace("}", " ")
                group.append(text + ". {}")
            if group:
                groups.append(group)
    return groups


@dataclass
class SubjectPrompts:
    """Every (request × context template) prompt, tokenised, with the subject's last token index.

    Rows are request-major: request r owns rows ``r*n_t .. r*n_t + n_t - 1``; row ``r*n_t`` is the bare
    prompt (template "{}"). ``group_of[t]`` is the template group of template t (for key averaging).
    """

    ids: list[list[int]]
    lookup: list[int]
    n_templates: int
    group_of: list[int]

    @classmethod
    def build(cls, enc: Encoder, requests: Sequence[Request], templates: Sequence[Sequence[str]]) -> SubjectPrompts:
        flat = [(g, t) for g, group in enumerate(templates) for t in group]
        if not flat or flat[0][1] != "{}":
            raise ConfigError("the first context template must be the bare '{}'")
        ids, lookup = [], []
        for req in requests:
            for _, template in flat:
                before, after = fill_parts(template, req.prompt)
                seq, idx = enc.encode_with_subject(before, req.subject, after)
                ids.append(seq)
                lookup.append(idx)
        return cls(ids, lookup, len(flat), [g for g, _ in flat])

    def average_keys(self, per_row: torch.Tensor) -> torch.Tensor:
        """[n_rows, d] -> [n_requests, d]: mean within each template group, then across groups."""
        n_req = len(self.ids) // self.n_templates
        x = per_row.reshape(n_req, self.n_templates, -1)
        groups = sorted(set(self.group_of))
        means = []
        for g in groups:
            cols = [t for t, gg in enumerate(self.group_of) if gg == g]
            means.append(x[:, cols].mean(dim=1))
        return torch.stack(means, dim=0).mean(dim=0)


@dataclass
class ZBatch:
    ids: list[list[int]]
    lookup: list[int]
    owner: list[int]  # local request index of each sequence
    is_kl: list[bool]
    tgt_rows: list[int]  # sequence index of each target token
    tgt_cols: list[int]
    tgt_ids: list[int]
    tgt_w: list[float]  # 1 / (len(target) * n_rewriting_prompts): sums to a mean NLL per request


def z_batch(enc: Encoder, requests: Sequence[Request], templates: Sequence[Sequence[str]]) -> ZBatch:
    flat = [t for group in templates for t in group]
    b = ZBatch([], [], [], [], [], [], [], [])
    for r, req in enumerate(requests):
        target = enc.target_ids(req.target)
        for template in flat:
            before, after = fill_parts(template, req.prompt)
            seq, idx = enc.encode_with_subject(before, req.subject, after)
            s = len(b.ids)
            b.ids.append(seq + target[:-1])
            b.lookup.append(idx)
            b.owner.append(r)
            b.is_kl.append(False)
            for j, t in enumerate(target):
                b.tgt_rows.append(s)
                b.tgt_cols.append(len(seq) - 1 + j)
                b.tgt_ids.append(t)
                b.tgt_w.append(1.0 / (len(target) * len(flat)))
        before, after = KL_PROMPT.split("{}")
        seq, idx = enc.encode_with_subject(before, req.subject, after)
        b.ids.append(seq)
        b.lookup.append(idx)
        b.owner.append(r)
        b.is_kl.append(True)
    return b


__all__ = ["Request", "Encoder", "SubjectPrompts", "ZBatch", "z_batch", "context_templates", "fill_parts",
           "request_names", "CONTEXT_PROMPTS", "KL_PROMPT"]
