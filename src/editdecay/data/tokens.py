"""Tokenisation rules shared by the editor and the scorer, kept below both so neither imports the other.

A target is tokenised as a *continuation* of its prompt: ``" " + target`` unless it already starts with
whitespace, tokenised without special tokens; a prompt gets the ids the tokenizer puts in front of any text
(:func:`special_prefix`: a BOS for Llama-2/Gemma style tokenizers, nothing for GPT-2/SmolLM2). The editor
(:mod:`editdecay.edit.prompts`) and the scorer (:mod:`editdecay.evaluate.scoring`) both follow these rules,
so the tokens an edit optimises are exactly the tokens the evaluation scores.
"""

from __future__ import annotations

from typing import Any

from editdecay.errors import ConfigError


def continuation(text: str) -> str:
    """A target as the model continues a prompt with it: ``" " + text`` unless it already starts with whitespace."""
    return text if text[:1].isspace() else " " + text


def special_prefix(tok: Any) -> list[int]:
    """Ids the tokenizer puts in front of any text (e.g. BOS); empty for GPT-2-style tokenizers."""
    probe = "The"
    with_special = list(tok(probe)["input_ids"])
    plain = list(tok(probe, add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start:start + len(plain)] == plain:
            return with_special[:start]
    raise ConfigError(f"cannot locate the plain tokens of {probe!r} inside the tokenizer's encoding {with_special}")


def pad_token_id(tok: Any) -> int:
    """The id padded sequences are filled with: the pad token, else EOS, else 0 (padding is never attended)."""
    for value in (tok.pad_token_id, tok.eos_token_id, 0):
        if value is not None:
            return int(value)
    return 0


__all__ = ["continuation", "special_prefix", "pad_token_id"]
