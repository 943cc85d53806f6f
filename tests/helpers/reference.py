"""Test-only references of what the package computes in one pass: the token windows and corpus hash of the
statistics text, the fine-tuning loss summed per token, the editor's subject position in one prompt."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from editdecay.analyze.shift import subject_positions
from editdecay.edit.stats_text import Corpus, WindowStream
from editdecay.errors import DataError
from editdecay.finetune.data import IGNORE_INDEX


def corpus_documents(corpora: Sequence[str]) -> list[str]:
    """Documents of the named corpora, interleaved round-robin (so a small budget samples all of them)."""
    out = list(Corpus(corpora).documents())
    if not out:
        raise DataError(",".join(corpora), "the statistics corpora hold no text")
    return out


def corpus_hash(corpora: Sequence[str]) -> str:
    """The corpus hash every statistics cache key names (:meth:`Corpus.hash`)."""
    return Corpus(corpora).hash()


def token_windows(tok: Any, corpora: Sequence[str], n_tokens: int | None, seq_len: int,
                  n_samples: int | None = None) -> list[list[int]]:
    """The windows :func:`editdecay.edit.stats.second_moments` counts, as a list."""
    return list(WindowStream(tok, Corpus(corpora), seq_len, None if n_samples is not None else n_tokens, n_samples))


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropy over positions whose label is not -100."""
    shift_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    return nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")


def subject_last_token(tokenizer: Any, template: str, subject: str) -> tuple[list[int], int]:
    """Token ids of the filled prompt (with the tokenizer's prefix specials) and the index of the subject's
    last token in them, as the editor finds it (:func:`editdecay.analyze.shift.subject_positions`)."""
    return subject_positions(tokenizer, [SimpleNamespace(case_id="<prompt>", subject=subject, prompt=template,
                                                         target_new="")])[0]
