"""Second-moment statistics: one pass equals per-layer passes; the disk cache hits, misses and keys correctly;
budgets in tokens or samples, streamed local and hub corpora, and an explicit shortfall."""

from __future__ import annotations

import json
import sys
import time
import types
import warnings

import pytest
import torch
from helpers.reference import corpus_documents, corpus_hash, token_windows

from editdecay.edit import stats as stats_mod
from editdecay.edit.stats import (
    STATS_KEYS,
    StatsShortfall,
    StatsWarning,
    second_moments,
    second_moments_per_layer,
    stats_kwargs,
    stats_settings,
)
from editdecay.edit.stats_cache import StatsCache, model_layer_hashes
from editdecay.edit.stats_text import Corpus
from editdecay.errors import DataError
from editdecay.models.arch import get_adapter

pytestmark = [pytest.mark.usefixtures("one_thread"),  # one intra-op thread: see conftest.py
              pytest.mark.filterwarnings("ignore::editdecay.edit.stats.StatsWarning")]  # tiny budgets are low


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


# ----------------------------------------------------------------------------------------------------------
# budgets, corpora, shortfall (issue 12 part 4)

DOCS = ["The cat sat on the mat near the door.", "Paris is the capital of France.",
        "A long document " + "with many repeated words " * 12 + "end.", "Short one.", "Rivers flow to the sea in spring."]


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StatsWarning)
        return fn(*args, **kwargs)


def _old_token_windows(tok, docs, n_tokens, seq_len):
    """The pre-streaming algorithm, verbatim: the stream must cut exactly these windows."""
    from editdecay.evaluate.scoring import special_prefix

    prefix = special_prefix(tok)
    body = seq_len - len(prefix)
    stream = []
    for doc in docs:
        stream.extend(tok(doc, add_special_tokens=False)["input_ids"])
        if tok.eos_token_id is not None:
            stream.append(tok.eos_token_id)
        if len(stream) >= n_tokens:
            break
    windows, total, pos = [], 0, 0
    while total < n_tokens and pos < len(stream):
        take = min(body, n_tokens - total - len(prefix))
        if take <= 0:
            break
        windows.append(prefix + stream[pos:pos + take])
        pos += take
        total += len(windows[-1])
    return windows


@pytest.mark.parametrize("bos", [False, True])
def test_streamed_windows_equal_the_earlier_list(tiny_tok, tiny_tok_bos, bos):
    tok = tiny_tok_bos if bos else tiny_tok
    docs = corpus_documents(["wikitext", "wikipedia"])
    for n, seq in [(1500, 64), (777, 50), (65, 64), (129, 64)]:
        assert token_windows(tok, ["wikitext", "wikipedia"], n, seq) == _old_token_windows(tok, docs, n, seq)


def test_named_corpora_hash_is_unchanged():
    """Every cached statistic of the default corpora names this hash; streaming must not change it."""
    assert corpus_hash(["wikitext", "wikipedia"]) == "e7fb2358bde0a921"


def test_cache_key_form_is_unchanged_for_token_budgets(make_tiny):
    model, tok = make_tiny("llama", n_layers=3)
    adapter = get_adapter(model)
    res = _quiet(second_moments, model, tok, adapter, [1, 2], n_tokens=900, seq_len=64)
    hashes = model_layer_hashes(model, adapter, tok, 2)
    c = corpus_hash(["wikitext", "wikipedia"])
    assert res.keys == {layer: f"{hashes[layer]}-L{layer}-{c}-900-64-float32-float64" for layer in (1, 2)}
    assert res.n_tokens == 900 and res.short is None and res.unit == "tokens" and res.requested == 900


def _write_corpus(tmp_path, kind="jsonl", docs=DOCS):
    path = tmp_path / f"corpus.{kind}"
    if kind == "txt":
        path.write_text("\n".join(docs) + "\n")
    elif kind == "json":
        path.write_text(json.dumps([{"text": d} for d in docs]))
    else:
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def test_local_file_formats_give_the_same_documents(tmp_path):
    got = [list(Corpus([str(_write_corpus(tmp_path, kind))]).documents()) for kind in ("txt", "json", "jsonl")]
    assert got[0] == got[1] == got[2] == DOCS
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, record 1, field 'text': missing field"):
        list(Corpus([str(bad)]).documents())


def test_shortfall_is_an_error_then_keyed_by_what_was_counted(make_tiny, tmp_path, monkeypatch):
    model, tok = make_tiny("llama", n_layers=3)
    adapter = get_adapter(model)
    corpus = [str(_write_corpus(tmp_path))]
    cache = StatsCache(tmp_path / "stats")
    total = sum(len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in DOCS)  # + EOS each
    with pytest.raises(StatsShortfall, match=rf"hold only {total:,} tokens.*10,000 were asked.*mom2_allow_short"):
        _quiet(second_moments, model, tok, adapter, [1, 2], corpora=corpus, n_tokens=10_000, seq_len=32, cache=cache)
    # the statistics counted were cached under their own count: allowing the shortfall recomputes nothing
    monkeypatch.setattr(stats_mod, "_collect", lambda *a, **k: pytest.fail("recomputed"))
    with pytest.warns(StatsWarning, match=rf"hold only {total:,} tokens.*mom2_allow_short=true"):
        res = second_moments(model, tok, adapter, [1, 2], corpora=corpus, n_tokens=10_000, seq_len=32, cache=cache,
                             allow_short=True)
    assert res.from_cache == [1, 2] and res.n_tokens == total
    assert res.short == {"unit": "tokens", "asked": 10_000, "counted": total}
    assert all(f"-{total}-32-" in key and "-10000-" not in key for key in res.keys.values())
    assert res.manifest_fields()["short"] == res.short
    with pytest.raises(StatsShortfall):  # known short from the pointer: fails at once, again without work
        _quiet(second_moments, model, tok, adapter, [1, 2], corpora=corpus, n_tokens=10_000, seq_len=32, cache=cache)
    monkeypatch.undo()
    # computed without a cache: the same C and the same id as the cached run
    fresh = _quiet(second_moments, model, tok, adapter, [1, 2], corpora=corpus, n_tokens=10_000, seq_len=32,
                   allow_short=True)
    assert fresh.stats_id == res.stats_id
    torch.testing.assert_close(fresh.cov[2], res.cov[2])
    # a budget the corpus meets is not short, and its key names the budget
    ok = _quiet(second_moments, model, tok, adapter, [1], corpora=corpus, n_tokens=total - 5, seq_len=32)
    assert ok.short is None and ok.n_tokens == total - 5 and f"-{total - 5}-32-" in ok.keys[1]


def test_legacy_short_entry_under_the_asked_key_is_not_reused(make_tiny, tmp_path):
    """Earlier versions cached a short count under the asked key; such an entry is recounted, not trusted."""
    model, tok = make_tiny("llama", n_layers=2)
    adapter = get_adapter(model)
    corpus = [str(_write_corpus(tmp_path))]
    cache = StatsCache(tmp_path / "stats")
    res = _quiet(second_moments, model, tok, adapter, [1], corpora=corpus, n_tokens=50, seq_len=32, cache=cache)
    asked = res.keys[1].replace("-50-32-", "-10000-32-")
    meta = {k: v for k, v in cache.load_meta(res.keys[1]).items() if k not in ("budget", "short", "unit")}
    cache.save(asked, res.cov[1] * 0, meta)  # legacy form: n_tokens 50 under the key asking 10,000
    with pytest.raises(StatsShortfall):
        _quiet(second_moments, model, tok, adapter, [1], corpora=corpus, n_tokens=10_000, seq_len=32, cache=cache)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_samples_mode_is_the_mean_over_truncated_documents(make_tiny, tmp_path, arch):
    """n_samples: one window per document (its first seq_len tokens); padding never enters C."""
    model, tok = make_tiny(arch, n_layers=2)
    adapter = get_adapter(model)
    corpus = [str(_write_corpus(tmp_path))]
    res = _quiet(second_moments, model, tok, adapter, [1], corpora=corpus, n_samples=4, seq_len=16, batch_size=3)
    seen = []
    handle = adapter.rewrite_module(model, 1).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        for doc in DOCS[:4]:
            model(input_ids=torch.tensor([tok(doc, add_special_tokens=False)["input_ids"][:16]]))
    handle.remove()
    keys = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen]).double()
    assert res.unit == "samples" and res.n_samples == 4 and res.n_tokens == keys.shape[0]
    torch.testing.assert_close(res.cov[1], keys.T @ keys / keys.shape[0], rtol=1e-5, atol=1e-7)
    assert res.keys[1].split("-")[3] == "4s"
    per = second_moments_per_layer(model, tok, adapter, [1], corpora=corpus, n_samples=4, seq_len=16, batch_size=3)
    torch.testing.assert_close(per[1], res.cov[1], rtol=1e-10, atol=1e-12)
    with pytest.raises(StatsShortfall, match="hold only 5 samples.*10 were asked.*mom2_n_samples"):
        _quiet(second_moments, model, tok, adapter, [1], corpora=corpus, n_samples=10, seq_len=16)


def test_tokens_per_dimension_recorded_and_warned_when_low(make_tiny):
    model, tok = make_tiny("llama", n_layers=1)  # key width 128 (intermediate size)
    adapter = get_adapter(model)
    with pytest.warns(StatsWarning, match=r"6,400 tokens for a 128-wide key is 50.0 tokens per dimension"):
        low = second_moments(model, tok, adapter, [0], n_tokens=6400, seq_len=64)
    assert low.dims == {0: 128} and low.tokens_per_dim == 50.0
    assert low.manifest_fields()["tokens_per_dim"] == 50.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", StatsWarning)
        enough = second_moments(model, tok, adapter, [0], n_tokens=12_800, seq_len=64)
    assert enough.tokens_per_dim == 100.0


def test_stats_settings_keep_stage_ids_and_feed_second_moments():
    from editdecay.edit.hparams import default_hparams, hparams_from_dict

    hp = default_hparams("memit", "smollm2-135m").to_dict()
    assert stats_settings(hp) == {k: hp[k] for k in STATS_KEYS}  # what grid stats stages hashed so far
    kw = stats_kwargs(stats_settings(hp))
    assert kw == {"corpora": ["wikitext", "wikipedia"], "n_tokens": 100_000, "n_samples": None, "seq_len": 256,
                  "accum_dtype": "float64", "allow_short": False}
    samples = hparams_from_dict("memit", {"mom2_n_samples": 1000, "mom2_allow_short": True}).to_dict()
    settings = stats_settings(samples)
    assert "mom2_n_tokens" not in settings and settings["mom2_n_samples"] == 1000
    assert stats_kwargs(settings)["n_samples"] == 1000 and stats_kwargs(settings)["allow_short"] is True


def test_hub_offline_fails_at_once_with_the_way_out(make_tiny, monkeypatch):
    model, tok = make_tiny("llama", n_layers=2)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"HF_HUB_OFFLINE=1.*local file.*\.jsonl"):
        second_moments(model, tok, get_adapter(model), [1], corpora=["hf:wikimedia/wikipedia:20231101.en"])
    assert time.perf_counter() - start < 2


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(DataError, match=r"cannot reach the Hugging Face hub at 127.0.0.1:9.*HF_HUB_OFFLINE=1"):
        Corpus(["hf:wikimedia/wikipedia:20231101.en"])


def test_hub_corpus_is_streamed_and_pinned_to_its_revision(make_tiny, tmp_path, monkeypatch):
    """With the hub reachable (faked here): rows stream from datasets with streaming=True at the revision the
    key names; C equals the same text read from a local file."""
    from editdecay.edit import stats_text

    calls = []

    def load_dataset(name, config, split, streaming, revision):
        calls.append((name, config, split, streaming, revision))
        return iter([{"text": d, "id": i} for i, d in enumerate(DOCS)])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(stats_text, "check_hub_reachable", lambda source, timeout=5.0: None)
    monkeypatch.setattr(stats_text, "hub_revision", lambda name, source: "rev1")
    model, tok = make_tiny("llama", n_layers=2)
    adapter = get_adapter(model)
    hub = _quiet(second_moments, model, tok, adapter, [1], corpora=["hf:org/wiki:en@train"], n_samples=3, seq_len=16)
    assert calls and all(c == ("org/wiki", "en", "train", True, "rev1") for c in calls)
    local = _quiet(second_moments, model, tok, adapter, [1], corpora=[str(_write_corpus(tmp_path))], n_samples=3,
                   seq_len=16)
    torch.testing.assert_close(hub.cov[1], local.cov[1], rtol=0, atol=0)
    assert hub.corpora == ["hf:org/wiki:en@train@rev1"]
    monkeypatch.setattr(stats_text, "hub_revision", lambda name, source: "rev2")
    newer = _quiet(second_moments, model, tok, adapter, [1], corpora=["hf:org/wiki:en@train"], n_samples=3, seq_len=16)
    assert newer.stats_id != hub.stats_id  # another revision of the data is other statistics


@pytest.mark.parametrize("n", [0, 1, 2, 7, 128])
def test_packed_upper_triangle_round_trips_bit_for_bit(n):
    from editdecay.edit.stats_cache import mirror_upper_, pack_symmetric, unpack_symmetric

    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, dtype=torch.float64, generator=g)
    c = mirror_upper_(a.clone())
    assert torch.equal(c, c.T) and torch.equal(torch.triu(c), torch.triu(a))  # the upper triangle is kept as is
    packed = pack_symmetric(c)
    assert packed.shape == (n * (n + 1) // 2,)
    assert torch.equal(unpack_symmetric(packed), c)
    if n > 1:
        with pytest.raises(ValueError, match="symmetric square matrix"):
            pack_symmetric(a)  # its lower half would be lost
    if n:  # between two triangular numbers: no square matrix has that many upper-triangle values
        with pytest.raises(ValueError, match="not the upper triangle"):
            unpack_symmetric(torch.zeros(n * (n + 1) // 2 + 1, dtype=torch.float64))


def test_cache_stores_half_the_bytes_and_still_reads_the_full_form(make_tiny, tmp_path):
    """Second moments are exactly symmetric and stored as their upper triangle (about half a d×d file); an entry
    written in the earlier full form loads unchanged."""
    from safetensors.torch import save_file

    model, tok = make_tiny("llama", n_layers=4)
    adapter = get_adapter(model)
    cache = StatsCache(tmp_path)
    first = second_moments(model, tok, adapter, [1, 2], n_tokens=N_TOKENS, seq_len=64, cache=cache)
    c = first.cov[1]
    assert torch.equal(c, c.T)
    key = first.keys[1]
    size = (tmp_path / f"{key}.safetensors").stat().st_size
    full_bytes = c.numel() * c.element_size()
    assert size < 0.55 * full_bytes
    again = second_moments(model, tok, adapter, [1, 2], n_tokens=N_TOKENS, seq_len=64, cache=cache)
    assert again.from_cache == [1, 2] and all(torch.equal(again.cov[k], first.cov[k]) for k in (1, 2))

    save_file({"mom2": c.contiguous()}, str(tmp_path / f"{key}.safetensors"), metadata={"key": key})  # old form
    assert torch.equal(cache.load(key), c)
