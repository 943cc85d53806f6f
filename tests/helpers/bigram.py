"""A causal LM whose next-token logits depend only on the current token, with designed probabilities, and the
closed form of its log-probabilities: scoring, edit metrics and downstream tests check against it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

IS, THE, OF, IN, CITY_A, CITY_B = 446, 261, 276, 285, 281, 507  # tiny_tok ids of " is", " the", " of", " in", " city"


def designed_table(vocab: int, probs: dict[tuple[int, int], float]) -> torch.Tensor:
    """Logits [vocab, vocab]: row = previous token; listed (prev, next) get their probability, the rest of the
    row shares the remaining mass uniformly. Logits are log-probabilities, so softmax gives them back exactly."""
    table = torch.zeros(vocab, vocab, dtype=torch.float64)
    rows: dict[int, dict[int, float]] = {}
    for (prev, nxt), p in probs.items():
        rows.setdefault(prev, {})[nxt] = p
    for prev, row in rows.items():
        rest = (1.0 - sum(row.values())) / (vocab - len(row))
        table[prev] = math.log(rest)
        for nxt, p in row.items():
            table[prev, nxt] = math.log(p)
    return table.float()


def bigram_logprob(vocab: int, probs: dict[tuple[int, int], float], prev: int, nxt: int) -> float:
    """The closed form of the designed model's log P(next | prev)."""
    if (prev, nxt) in probs:
        return math.log(probs[(prev, nxt)])
    listed = {n: p for (pv, n), p in probs.items() if pv == prev}
    if not listed:
        return -math.log(vocab)
    return math.log((1.0 - sum(listed.values())) / (vocab - len(listed)))


class BigramLM(nn.Module):
    """A causal LM whose next-token logits depend only on the current token: logits = table[input_ids]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table)
        self.config = SimpleNamespace(vocab_size=table.shape[0])

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
        logits = self.table[input_ids]
        if isinstance(logits_to_keep, torch.Tensor):
            logits = logits[:, logits_to_keep]
        return SimpleNamespace(logits=logits)
