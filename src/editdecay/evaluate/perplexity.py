"""Perplexity on held-out raw text with strided (sliding) windows, as in the Hugging Face perplexity guide.

The documents are joined with blank lines and tokenised once. Each window scores the next ``stride`` tokens
with the ``window - stride`` (or more, near the start) preceding tokens as context, so every token after the
first is scored exactly once and with at least ``window - stride`` tokens of context when they exist.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import torch
from torch import nn

from editdecay.data.corpora import load_text
from editdecay.errors import ConfigError, DataError, NumericalError
from editdecay.evaluate.scoring import model_device


@torch.no_grad()
def perplexity_of_ids(model: nn.Module, ids: list[int], window: int = 512, stride: int = 256,
                      progress: bool = False) -> dict[str, Any]:
    """``{"perplexity", "nll", "n_tokens"}`` of a token sequence (the first token is context only)."""
    if not 0 < stride < window:
        raise ConfigError(f"need 0 < stride < window (a window scores `stride` new tokens after at least one "
                          f"token of context), got stride={stride}, window={window}")
    if len(ids) < 2:
        raise DataError("<text>", f"needs at least 2 tokens to score, got {len(ids)}")
    device = model_device(model)
    was_training = model.training
    model.eval()
    nll_sum, count = 0.0, 0
    spans = [(t, min(t + stride, len(ids))) for t in range(1, len(ids), stride)]  # token 0 is never predicted
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(spans), desc="perplexity", file=sys.stderr, unit="window")
    try:
        for first, end in spans:
            begin = max(0, end - window)  # left context: the window's remaining tokens
            chunk = torch.tensor([ids[begin:end]], dtype=torch.long, device=device)
            logits = model(input_ids=chunk, attention_mask=torch.ones_like(chunk)).logits[0]
            pos = torch.arange(first - begin - 1, end - begin - 1, device=device)  # positions predicting targets
            picked = logits[pos].float()
            targets = chunk[0, pos + 1]
            lp = picked.gather(1, targets[:, None])[:, 0] - torch.logsumexp(picked, dim=-1)
            if not torch.isfinite(lp).all():
                raise NumericalError("non-finite log-probabilities in perplexity; the weights may hold NaN/inf")
            nll_sum -= float(lp.sum())
            count += int(lp.numel())
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if was_training:
            model.train()
    return {"perplexity": math.exp(nll_sum / count), "nll": nll_sum / count, "n_tokens": count}


def perplexity(model: nn.Module, tok: Any, text: str | os.PathLike = "wikitext", max_tokens: int | None = 4096,
               window: int = 512, stride: int = 256, progress: bool = False) -> dict[str, Any]:
    """Perplexity on a named raw-text corpus (``wikitext``, ``wikipedia``, ...) or a text file.

    ``max_tokens`` keeps the first N tokens (CPU budget); ``None`` scores the whole corpus.
    """
    docs = load_text(text)
    if not docs:
        raise DataError(str(text), "has no text")
    if max_tokens is not None:  # tokenise only a prefix of the corpus: far more characters than tokens needed
        kept, chars = [], 0
        for doc in docs:
            kept.append(doc)
            chars += len(doc)
            if chars > 16 * max_tokens:
                break
        docs = kept
    ids = list(tok("\n\n".join(docs))["input_ids"])
    if max_tokens is not None:
        ids = ids[:max_tokens]
    out = perplexity_of_ids(model, ids, window=window, stride=stride, progress=progress)
    out.update({"text": str(text), "window": window, "stride": stride})
    return out
