"""Second-moment statistics: one pass equals per-layer passes; the disk cache hits, misses and keys correctly."""

from __future__ import annotations

import pytest
import torch

from editdecay.edit.stats import (
    StatsCache,
    corpus_documents,
    model_layer_hashes,
    second_moments,
    second_moments_per_layer,
    token_windows,
)
from editdecay.models.arch import get_adapter

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread: see conftest.py


N_TOKENS = 1500


def test_one_pass_equals_per_layer_passes(make_tiny):
    model, tok = make_tiny("llama", n_layers=4)
    adapter = get_adapter(model)
    one = second_moments(model, tok, adapter, [1, 2, 3], n_tokens=N_TOKENS, seq_len=64, cache=None)
    per = second_moments_per_layer(model, tok, adapter, [1, 2, 3], n_tokens=N_TOKENS, seq_len=64)
    assert one.n_tokens == N_TOKENS
    for layer in (1, 2, 3):
        c = one.cov[layer]
        assert c.dtype == torch.float64 and c.shape == (128, 128)
        torch.testing.assert_close(c, per[layer], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(c, c.T)
        assert torch.linalg.eigvalsh(c).min() > -1e-8  # positive semi-definite


def test_second_moment_is_mean_of_outer_products(make_tiny):
    """C equals E[k kᵀ] over every token, computed directly from the rewrite module's inputs."""
    model, tok = make_tiny("gpt2", n_layers=2)
    adapter = get_adapter(model)
    res = second_moments(model, tok, adapter, [1], n_tokens=300, seq_len=50, cache=None)
    windows = token_windows(tok, ["wikitext", "wikipedia"], 300, 50)
    seen = []
    handle = adapter.rewrite_module(model, 1).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        for w in windows:
            model(input_ids=torch.tensor([w]))
    handle.remove()
    keys = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen]).double()
    assert keys.shape[0] == 300
    torch.testing.assert_close(res.cov[1], keys.T @ keys / keys.shape[0], rtol=1e-5, atol=1e-8)


def test_cache_hits_and_weight_hash_invalidation(make_tiny, tmp_path):
    model, tok = make_tiny("llama", n_layers=4)
    adapter = get_adapter(model)
    cache = StatsCache(tmp_path / "stats")
    first = second_moments(model, tok, adapter, [1, 2], n_tokens=N_TOKENS, seq_len=64, cache=cache)
    assert first.from_cache == []
    files = sorted(p.name for p in (tmp_path / "stats").iterdir())
    assert len([f for f in files if f.endswith(".safetensors")]) == 2
    assert len([f for f in files if f.endswith(".json")]) == 2
    assert not [f for f in files if f.endswith(".tmp")]
    again = second_moments(model, tok, adapter, [1, 2], n_tokens=N_TOKENS, seq_len=64, cache=cache)
    assert again.from_cache == [1, 2] and again.stats_id == first.stats_id
    for layer in (1, 2):
        torch.testing.assert_close(again.cov[layer], first.cov[layer])
    # a different token count is a different entry
    other = second_moments(model, tok, adapter, [1], n_tokens=N_TOKENS // 2, seq_len=64, cache=cache)
    assert other.from_cache == []
    # changing layer 2's weights invalidates layers >= 2 only
    with torch.no_grad():
        adapter.layer(model, 2).mlp.up_proj.weight.mul_(1.5)
    changed = second_moments(model, tok, adapter, [1, 2], n_tokens=N_TOKENS, seq_len=64, cache=cache)
    assert changed.from_cache == [1]
    assert changed.stats_id != first.stats_id
    assert not torch.allclose(changed.cov[2], first.cov[2])
    meta = cache.entries()[0]
    for key in ("model_hash", "layer", "corpus_hash", "n_tokens", "model_dtype", "accum_dtype"):
        assert key in meta


def test_layer_hashes_depend_only_on_lower_layers(make_tiny):
    model, tok = make_tiny("llama", n_layers=4)
    adapter = get_adapter(model)
    before = model_layer_hashes(model, adapter, tok, 3)
    with torch.no_grad():
        adapter.rewrite_weight(model, 3).add_(1.0)
        model.lm_head.weight.add_(1.0)  # the head never changes a layer's keys
    after = model_layer_hashes(model, adapter, tok, 3)
    assert [before[i] == after[i] for i in range(4)] == [True, True, True, False]


def test_corpora_are_interleaved():
    docs = corpus_documents(["wikitext", "wikipedia"])
    from editdecay.data.corpora import load_text

    wt, wp = load_text("wikitext"), load_text("wikipedia")
    assert docs[0] == wt[0] and docs[1] == wp[0] and docs[2] == wt[1]
    assert len(docs) == len(wt) + len(wp)
