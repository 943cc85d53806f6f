"""Replay: the edit facts, with paraphrases, mixed into the fine-tuning data at a chosen rate.

Each record gives prompt -> target_new pairs: its own prompt and, with ``paraphrases``, the record's paraphrase
prompts (Wen & Zhang 2025: paraphrase augmentation improves retention). The target is written as a
continuation (``" " + target``), the way the editor and the scorer tokenise it. Note that CounterFact's
paraphrase prompts are also what PS is measured on, so with ``paraphrases`` PS after replay is not held out.

The rate is a share of the training *examples*: ``n_replay = round(rate / (1 - rate) * n_corpus)`` pairs, cycling
through the pool, are appended to the corpus; the loader's per-epoch permutation then spreads them so that each
epoch holds exactly that share (and any stretch of steps holds it in expectation).
"""

from __future__ import annotations

from collections.abc import Sequence

from editdecay.data.corpora import TrainExample
from editdecay.data.records import EditRecord
from editdecay.data.tokens import continuation
from editdecay.errors import ConfigError, DataError


def replay_pool(records: Sequence[EditRecord], paraphrases: bool = True) -> list[TrainExample]:
    """Every distinct replay pair, record by record (its prompt, then its paraphrases)."""
    if not records:
        raise DataError("<edit manifest>", "no edit records to replay", field="records")
    pool: list[TrainExample] = []
    for record in records:
        target = continuation(record.target_new)
        prompts = [record.filled_prompt]
        if paraphrases:
            prompts += list(record.paraphrase_prompts)
        seen: set[str] = set()
        for prompt in prompts:
            if prompt not in seen:
                seen.add(prompt)
                pool.append(TrainExample(prompt, target))
    return pool


def replay_count(n_corpus: int, rate: float) -> int:
    """How many replay examples make ``rate`` of the mixed data."""
    if not 0 < rate < 1:
        raise ConfigError(f"fine-tuning setting 'replay_rate' = {rate!r}: must be in (0, 1)")
    return max(1, round(rate / (1.0 - rate) * n_corpus))


def mix(corpus: list[TrainExample], pool: list[TrainExample], rate: float) -> list[TrainExample]:
    """``corpus`` followed by ``replay_count`` pool examples (the pool repeated in order as needed)."""
    if not pool:
        raise DataError("<edit manifest>", "the replay pool is empty", field="records")
    n = replay_count(len(corpus), rate)
    return list(corpus) + [pool[i % len(pool)] for i in range(n)]
