"""Tiny randomly initialised models and a small trained tokenizer, built in code with no download.

They exist for fast tests and smoke runs of every stage: each supported architecture at a few layers and
a hidden size of 64, with a byte-level BPE tokenizer trained in a fraction of a second on the text given (the
callers pass :func:`editdecay.data.corpora.tokenizer_text`, the shared WikiText lines: models is the first
stage and reads no corpus itself).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

TINY_ARCHS = ("llama", "mistral", "qwen2", "gemma3_text", "gpt2", "gptj", "gpt_neox")


def tiny_tokenizer(texts: Iterable[str], vocab_size: int = 512, add_bos: bool = False):
    """A byte-level BPE ``PreTrainedTokenizerFast`` (GPT-2 style: a leading space is part of a token) trained on
    ``texts`` (e.g. :func:`editdecay.data.corpora.tokenizer_text`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    if add_bos:
        bos = tok.token_to_id("<bos>")
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        bos_token="<bos>",
        add_bos_token=add_bos,
    )
    return fast


def tiny_config(arch: str, vocab_size: int, n_layers: int = 4, d_model: int = 64):
    """A transformers config for ``arch`` at toy size."""
    from transformers import (
        Gemma3TextConfig,
        GPT2Config,
        GPTJConfig,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
    )

    common = dict(vocab_size=vocab_size, tie_word_embeddings=False)
    llama_like = dict(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **common)
    if arch == "llama":
        return LlamaConfig(**llama_like)
    if arch == "mistral":
        return MistralConfig(**llama_like)
    if arch == "qwen2":
        return Qwen2Config(**llama_like)
    if arch == "gemma3_text":
        return Gemma3TextConfig(head_dim=16, sliding_window=64, **llama_like)
    if arch == "gpt2":
        return GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=256, **common)
    if arch == "gptj":
        return GPTJConfig(n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=256, rotary_dim=8, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                             num_attention_heads=4, max_position_embeddings=256, **common)
    raise ValueError(f"no tiny config for {arch!r}; known: {', '.join(TINY_ARCHS)}")


def tiny_model(arch: str = "llama", *, tokenizer, n_layers: int = 4, d_model: int = 64, seed: int = 0):
    """(model, tokenizer): a randomly initialised float32 model of ``arch`` in eval mode, its vocabulary that of
    ``tokenizer`` (a :func:`tiny_tokenizer`)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, len(tokenizer), n_layers, d_model)
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return model, tokenizer
