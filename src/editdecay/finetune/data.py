"""Training examples -> token ids with labels -> padded batches in a resumable order.

By default the loss covers the whole templated example, prompt and response, as LLM-Adapters' ``finetune.py``
and the study's ``run_finetune_peft.py`` do (``train_on_inputs=True``); with ``train_on_inputs=False`` it
covers only the response (labels are -100 on the prompt). The response ends with EOS, and the whole sequence is cut at ``max_length`` (as LLM-Adapters does: an example whose
prompt fills the window contributes no loss tokens). The order of examples is a permutation fixed by
(seed, epoch) and the position inside it by the micro-batch index, so a resumed run sees exactly the batches
an uninterrupted one would. Examples are tokenised when first used, so a short run on a large corpus does
not pay for tokenising all of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from editdecay.data.corpora import TrainExample, load_finetune_corpus
from editdecay.data.tokens import pad_token_id
from editdecay.errors import DataError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_loss_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def load_examples(name_or_path: str, max_examples: int | None = None) -> list[TrainExample]:
    """The corpus as TrainExamples, optionally only its first ``max_examples`` (before shuffling)."""
    examples = load_finetune_corpus(name_or_path)
    if max_examples is not None:
        examples = examples[:max_examples]
    if not examples:
        raise DataError(str(name_or_path), "the fine-tuning corpus holds no examples")
    return examples


def encode_example(example: TrainExample, tokenizer, max_length: int, train_on_inputs: bool = False) -> Encoded:
    """prompt (+ special tokens the tokenizer adds, e.g. BOS) + response + EOS.

    Labels cover the response only, or with ``train_on_inputs`` every token after the first (the prompt too).
    A text-only example (empty prompt) is all response: the loss covers every token.
    """
    prompt_ids = tokenizer(example.prompt, add_special_tokens=True)["input_ids"] if example.prompt else []
    if not example.prompt and getattr(tokenizer, "bos_token_id", None) is not None:
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        if probe and probe[0] == tokenizer.bos_token_id:  # tokenizer adds BOS: keep it for text-only examples
            prompt_ids = [tokenizer.bos_token_id]
    response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"] if example.response else []
    if tokenizer.eos_token_id is None:
        raise DataError("tokenizer", "has no EOS token; fine-tuning appends EOS to every response")
    response_ids = list(response_ids) + [tokenizer.eos_token_id]
    ids = (list(prompt_ids) + response_ids)[:max_length]
    if train_on_inputs:  # every token is a target except the first, which nothing predicts
        labels = [IGNORE_INDEX] + list(ids[1:])
    else:
        labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return Encoded(ids, labels)


class TrainData:
    """Micro-batches by global index: ``batch(m)`` is the same for the same (seed, m) in any process."""

    def __init__(self, examples: list[TrainExample], tokenizer, max_length: int, batch_size: int, seed: int,
                 train_on_inputs: bool = False):
        if not examples:
            raise DataError("fine-tuning data", "no examples to train on")
        self.examples = examples
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.seed = seed
        self.train_on_inputs = train_on_inputs
        self._encoded: dict[int, Encoded] = {}
        self._orders: dict[int, list[int]] = {}
        self.pad_id = pad_token_id(tokenizer)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.examples) / self.batch_size)

    def epoch_order(self, epoch: int) -> list[int]:
        """A permutation of example indices fixed by (seed, epoch)."""
        if epoch not in self._orders:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders[epoch] = torch.randperm(len(self.examples), generator=gen).tolist()
        return self._orders[epoch]

    def indices(self, micro: int) -> list[int]:
        """Example indices of global micro-batch ``micro`` (epochs follow one another)."""
        epoch, pos = divmod(micro, self.batches_per_epoch)
        order = self.epoch_order(epoch)
        return order[pos * self.batch_size : (pos + 1) * self.batch_size]

    def encoded(self, index: int) -> Encoded:
        if index not in self._encoded:
            self._encoded[index] = encode_example(self.examples[index], self.tokenizer, self.max_length,
                                                  self.train_on_inputs)
        return self._encoded[index]

    def batch(self, micro: int) -> dict[str, torch.Tensor]:
        return self.collate(self.indices(micro))

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding)."""
        items = [self.encoded(i) for i in indices]
        width = max(len(e.input_ids) for e in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, e in enumerate(items):
            n = len(e.input_ids)
            ids[row, :n] = torch.tensor(e.input_ids)
            labels[row, :n] = torch.tensor(e.labels)
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
