"""Frequency of a target in a fine-tuning corpus.

Whole-word, case-insensitive occurrences of the target's word sequence (``\\w+`` words) in the corpus text
(prompts and responses). Words are used instead of the model's tokens so that one count serves every model of
a grid and matches what a reader would search for.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable

CorpusLoader = Callable[[str], list[str]]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def phrase_counts(corpus_texts: Iterable[str], phrases: Iterable[str]) -> dict[str, int]:
    """Whole-word, case-insensitive occurrence count of each phrase (a word sequence) in the texts."""
    wanted = {p: tuple(_words(p)) for p in set(phrases)}
    lengths = {len(w) for w in wanted.values() if w}
    counters: dict[int, Counter] = {n: Counter() for n in lengths}
    for text in corpus_texts:
        words = _words(text)
        for n in lengths:
            counters[n].update(zip(*(words[i:] for i in range(n)), strict=False))
    return {p: (counters[len(w)][w] if w else 0) for p, w in wanted.items()}


def default_corpus_loader(name: str) -> list[str]:
    """Texts of a fine-tuning corpus (prompt and response of each example)."""
    from editdecay.data.corpora import load_finetune_corpus

    return [f"{ex.prompt}\n{ex.response}" for ex in load_finetune_corpus(name)]


def target_frequency(corpus: str, targets: Iterable[str],
                     corpus_loader: CorpusLoader = default_corpus_loader) -> dict[str, int]:
    """{target: occurrences in the fine-tuning corpus ``corpus``}; the loader's EditDecayError propagates."""
    return phrase_counts(corpus_loader(corpus), [t for t in targets if t])
