"""Shared fixtures: a tiny tokenizer and tiny models of every architecture; the real SmolLM2, loaded once."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_tok():
    from editdecay.data.corpora import tokenizer_text
    from editdecay.models.tiny import tiny_tokenizer

    return tiny_tokenizer(tokenizer_text())


@pytest.fixture(scope="session")
def tiny_tok_bos():
    from editdecay.data.corpora import tokenizer_text
    from editdecay.models.tiny import tiny_tokenizer

    return tiny_tokenizer(tokenizer_text(), add_bos=True)


@pytest.fixture
def make_tiny(tiny_tok):
    """Factory: make_tiny(arch="llama", n_layers=4, d_model=64, seed=0) -> (model, tokenizer)."""
    from editdecay.models.tiny import tiny_model

    def factory(arch: str = "llama", **kwargs):
        return tiny_model(arch, tokenizer=kwargs.pop("tokenizer", tiny_tok), **kwargs)

    return factory


@pytest.fixture(scope="session")
def smollm2_path():
    """Folder of the converted real SmolLM2-135M (converted once into EDITDECAY_HOME)."""
    from editdecay.models.registry import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """(model, tokenizer) of the real SmolLM2-135M. Tests must not modify it in place: deep-copy first."""
    from editdecay.models.registry import load_model

    return load_model(smollm2_path)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module, restored afterwards: on a shared 2-core machine two OpenMP
    threads that wait for each other made an edit 5x slower (158 s vs 32 s) and a training step up to 9x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
