"""Per-record edit metrics exactly as ROME/MEMIT define them, computed from one batched scoring pass.

CounterFact family (records with a ``target_true`` that are not zsRE), after ROME's ``compute_rewrite_quality_
counterfact`` and MEMIT's summarisation:

- ``efficacy`` (ES): 1 if NLL(new) < NLL(true) on the rewrite prompt, where NLL is the mean per-token negative
  log-likelihood of the target continuation under teacher forcing.
- ``paraphrase`` (PS): the same test on each paraphrase prompt, averaged within the record.
- ``neighborhood`` (NS): on each neighbourhood prompt, 1 if NLL(its true answer) < NLL(new); averaged.
- magnitudes (ROME's EM/PM/NM): ``exp(-NLL_new) - exp(-NLL_true)`` (rewrite, paraphrase) and
  ``exp(-NLL_true) - exp(-NLL_new)`` (neighbourhood), averaged within the record.
- argmax accuracies ``*_acc``: 1 if every target token is the top-1 prediction (neighbourhood: the true answer).

zsRE family (``dataset == "zsre"`` or no ``target_true``), after MEMIT's ``compute_rewrite_quality_zsre``:
``efficacy``, ``paraphrase`` and ``neighborhood`` are token-level top-1 accuracies of the target (neighbourhood:
``loc_ans``) given the prompt and the previous target tokens, averaged over the record's prompts.

A metric a record has no prompts for (e.g. no paraphrases) is left out of that record's dict and out of the
summary mean for that metric.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from editdecay.data.records import EditRecord
from editdecay.data.tokens import continuation, pad_token_id
from editdecay.errors import DataError
from editdecay.evaluate.scoring import TokenScores, score_alternatives


def metric_family(record: EditRecord) -> str:
    """'counterfact' (comparative NLL tests) or 'zsre' (token accuracy): zsRE data or no true target."""
    if record.dataset == "zsre" or not record.target_true:
        return "zsre"
    return "counterfact"


def _check(record: EditRecord, index: int) -> None:
    where = f"<records>[case_id={record.case_id}]"
    if len(record.neighborhood_answers) != len(record.neighborhood_prompts):
        raise DataError(where, f"{len(record.neighborhood_prompts)} neighborhood prompts but "
                        f"{len(record.neighborhood_answers)} answers", index, "neighborhood_answers")
    if "{}" not in record.prompt:
        raise DataError(where, "prompt template has no '{}' for the subject", index, "prompt")


def _groups_for(record: EditRecord) -> list[tuple[str, list[str]]]:
    """The (prompt, [continuations]) groups a record needs, in the order :func:`_metrics_from` consumes."""
    new = continuation(record.target_new)
    prompts = [record.filled_prompt, *record.paraphrase_prompts]
    neigh = list(zip(record.neighborhood_prompts, record.neighborhood_answers, strict=True))
    if metric_family(record) == "counterfact":
        true = continuation(record.target_true or "")
        return [(p, [new, true]) for p in prompts] + [(p, [continuation(ans), new]) for p, ans in neigh]
    return [(p, [new]) for p in prompts] + [(p, [continuation(ans)]) for p, ans in neigh]


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


def _metrics_from(record: EditRecord, groups: Sequence[Sequence[TokenScores]]) -> dict[str, Any]:
    out: dict[str, Any] = {"case_id": record.case_id}
    n_para = len(record.paraphrase_prompts)
    n_neigh = len(record.neighborhood_prompts)
    if metric_family(record) == "counterfact":
        rewrite = [(g[0], g[1]) for g in groups[:1 + n_para]]  # (new, true)
        neigh = [(g[0], g[1]) for g in groups[1 + n_para:]]  # (true answer, new)
        new, true = rewrite[0]
        out["efficacy"] = float(new.mean_nll < true.mean_nll)
        out["efficacy_magnitude"] = math.exp(-new.mean_nll) - math.exp(-true.mean_nll)
        out["efficacy_acc"] = float(new.all_argmax)
        if n_para:
            para = rewrite[1:]
            out["paraphrase"] = _mean([float(n.mean_nll < t.mean_nll) for n, t in para])
            out["paraphrase_magnitude"] = _mean([math.exp(-n.mean_nll) - math.exp(-t.mean_nll) for n, t in para])
            out["paraphrase_acc"] = _mean([float(n.all_argmax) for n, _ in para])
        if n_neigh:
            out["neighborhood"] = _mean([float(t.mean_nll < n.mean_nll) for t, n in neigh])
            out["neighborhood_magnitude"] = _mean([math.exp(-t.mean_nll) - math.exp(-n.mean_nll) for t, n in neigh])
            out["neighborhood_acc"] = _mean([float(t.all_argmax) for t, _ in neigh])
    else:
        scores = [g[0] for g in groups]
        out["efficacy"] = scores[0].token_accuracy
        if n_para:
            out["paraphrase"] = _mean([s.token_accuracy for s in scores[1:1 + n_para]])
        if n_neigh:
            out["neighborhood"] = _mean([s.token_accuracy for s in scores[1 + n_para:1 + n_para + n_neigh]])
    return out


def record_metrics(
    model: nn.Module,
    tok: Any,
    records: Sequence[EditRecord],
    batch_size: int = 32,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One flat dict of metric -> value (plus ``case_id``) per record, all records scored in one batched pass."""
    groups: list[tuple[str, list[str]]] = []
    spans: list[tuple[int, int]] = []
    for index, record in enumerate(records):
        if not isinstance(record, EditRecord):
            raise DataError("<records>", f"expected an EditRecord, got {type(record).__name__}", index)
        _check(record, index)
        rg = _groups_for(record)
        spans.append((len(groups), len(groups) + len(rg)))
        groups += rg
    scores = score_alternatives(model, tok, groups, batch_size=batch_size, progress=progress, desc="edit metrics")
    return [_metrics_from(r, scores[a:b]) for r, (a, b) in zip(records, spans, strict=True)]


def summarize(per_record: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each metric over the records that have it, plus ``n_records`` and per-metric counts ``n_<metric>``."""
    summary: dict[str, Any] = {}
    names: list[str] = []
    for row in per_record:
        for key in row:
            if key != "case_id" and key not in names:
                names.append(key)
    for name in names:
        values = [row[name] for row in per_record if name in row and row[name] is not None]
        summary[name] = float(np.mean(values)) if values else None
    summary["n_records"] = len(per_record)
    return summary


# ----------------------------------------------------------------------------------------------------------
# fluency: ROME's n-gram entropy of generated text

_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's ``compute_n_gram_entropy``: arithmetic mean over n of weight_n * entropy (bits) of n-gram frequencies.

    Words are split with a regex (``\\w+`` or a single punctuation mark) where ROME uses NLTK's tokenizer.
    """
    tokens = _WORD.findall(text)
    parts = []
    for n, w in zip(ns, weights, strict=True):
        grams = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
        if not grams:
            parts.append(0.0)
            continue
        freqs = np.array(list(grams.values()), dtype=np.float64)
        freqs /= freqs.sum()
        parts.append(w * float(np.sum(-freqs * np.log2(freqs))))
    return float(np.mean(parts))


def fluency(model: nn.Module, tok: Any, records: Sequence[EditRecord], max_new_tokens: int = 100,
            batch_size: int = 16) -> dict[str, float]:
    """case_id -> mean n-gram entropy of greedy generations from the record's ``generation_prompts``.

    ROME samples (top-k 5); greedy decoding is used here so the number is reproducible.
    """
    import torch

    from editdecay.evaluate.scoring import model_device

    jobs = [(r.case_id, p) for r in records for p in r.generation_prompts]
    texts: dict[str, list[str]] = {}
    device = model_device(model)
    old_side = tok.padding_side
    tok.padding_side = "left"
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            enc = tok([p for _, p in chunk], return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=pad_token_id(tok))
            for (case_id, prompt), row in zip(chunk, out[:, enc["input_ids"].shape[1]:], strict=True):
                # ROME measures the whole text it generated: the prompt followed by the generation
                texts.setdefault(case_id, []).append(prompt + tok.decode(row, skip_special_tokens=True))
    finally:
        tok.padding_side = old_side
        if was_training:
            model.train()
    return {cid: float(np.mean([ngram_entropy(t) for t in gens])) for cid, gens in texts.items()}
