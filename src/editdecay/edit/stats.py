"""Second moments C = E[k kᵀ] of the rewritten projection's input over generic text, with a disk cache.

:func:`second_moments` collects every requested layer in ONE forward pass per batch of text, stopping the
pass at the deepest layer's rewritten projection. Each batch's kᵀk is formed in float32 (also for a
bfloat16/float16 model: a bf16 Gram matrix loses C's small eigenvalues) and added to a float64
accumulator (``mom2_dtype``); C is the accumulated sum divided by the token count.
:func:`second_moments_per_layer` is the reference code's way (one pass per layer, each stopping at its
layer) and exists for the benchmark and the equality test.

Text (:mod:`editdecay.edit.stats_text`): local files or a hub dataset, streamed and cut into token windows,
which :func:`~editdecay.edit.stats_text.window_batches` groups for the forward passes. The budget is counted in
tokens (``n_tokens``: documents concatenated and cut into ``seq_len`` windows) or, as the reference code
does, in samples (``n_samples``: one window per document, truncated to ``seq_len``).

A corpus smaller than the budget is an error (:class:`StatsShortfall`) unless ``allow_short``: then C is
computed from what there is, a :class:`StatsWarning` says so, the result's ``short`` records it, and the
cache key and stats_id name the count actually used (a pointer file maps the asked key to it). Either way
the statistics counted are cached, so allowing the shortfall afterwards costs nothing.

Cache (:mod:`editdecay.edit.stats_cache`; :class:`StatsCache`, passed explicitly): one safetensors file + JSON
per layer under ``$EDITDECAY_HOME/stats/``, keyed by a hash of the model weights that can influence that layer's
keys (embeddings, layers 0..l, config, tokenizer), the layer, the corpus hash, the budget met, the window length
and the dtypes. Files are written atomically; a hit is reused by any later run of the same model.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from editdecay.data.tokens import pad_token_id, special_prefix
from editdecay.edit.hooks import frozen, hidden_arg, model_device
from editdecay.edit.stats_cache import (
    StatsCache,
    budget_label,
    cache_key,
    legacy_short,
    mirror_upper_,
    model_layer_hashes,
)
from editdecay.edit.stats_text import DEFAULT_CORPORA, Corpus, WindowStream, window_batches
from editdecay.errors import DataError
from editdecay.models.arch import ArchAdapter
from editdecay.util.io import stable_hash

# Below this many tokens per key dimension a warning is given: the eigenvalues of a sample second moment of
# a d-wide key from n tokens scatter by about (1 ± √(d/n))² (Marchenko–Pastur), ±20% at 100 tokens per
# dimension; the reference code's 100,000 Wikipedia articles give thousands per dimension.
LOW_TOKENS_PER_DIM = 100.0
# the hparams keys that decide the statistics (see stats_settings)
STATS_KEYS = ("layers", "mom2_dataset", "mom2_n_tokens", "mom2_seq_len", "mom2_dtype")
OPTIONAL_STATS_KEYS = {"mom2_n_samples": None, "mom2_allow_short": False}


class StatsWarning(UserWarning):
    """The statistics rest on little text (few tokens per dimension, or a corpus smaller than asked)."""


class StatsShortfall(DataError):
    """The statistics corpus holds less text than the budget asks for (and mom2_allow_short is off)."""


class _StopForward(Exception):
    pass


def stats_settings(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The hparams that decide the statistics, for a stage id: added keys only when set, so ids made before
    they existed stay the same; in samples mode the token budget does not matter and is left out."""
    out = {k: hparams[k] for k in STATS_KEYS}
    for key, default in OPTIONAL_STATS_KEYS.items():
        if hparams.get(key, default) != default:
            out[key] = hparams[key]
    if out.get("mom2_n_samples") is not None:
        out.pop("mom2_n_tokens")
    return out


def stats_kwargs(settings: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`second_moments` keyword arguments from hparams (a dict) or :func:`stats_settings` output."""
    return {"corpora": list(settings["mom2_dataset"]), "n_tokens": settings.get("mom2_n_tokens", 100_000),
            "n_samples": settings.get("mom2_n_samples"), "seq_len": settings["mom2_seq_len"],
            "accum_dtype": settings["mom2_dtype"], "allow_short": bool(settings.get("mom2_allow_short", False))}


@dataclass
class StatsResult:
    cov: dict[int, torch.Tensor]  # layer -> C [d_in, d_in] float64
    stats_id: str
    keys: dict[int, str]  # layer -> cache key
    n_tokens: int  # tokens counted (prefix specials included)
    seconds: float
    from_cache: list[int] = field(default_factory=list)
    n_samples: int | None = None  # windows counted (in samples mode: documents); None for old cache entries
    unit: str = "tokens"  # what the budget counted: tokens | samples
    requested: int = 0  # the budget asked for, in ``unit``
    dims: dict[int, int] = field(default_factory=dict)  # layer -> key dimension
    tokens_per_dim: float = 0.0  # n_tokens / the widest key: how well C is determined
    short: dict[str, Any] | None = None  # {"unit", "asked", "counted"} when the corpus fell short (allowed)
    corpora: list[str] = field(default_factory=list)

    def manifest_fields(self) -> dict[str, Any]:
        """What an edit manifest records about its statistics (JSON-ready)."""
        return {"stats_id": self.stats_id, "corpora": self.corpora, "unit": self.unit, "requested": self.requested,
                "n_tokens": self.n_tokens, "n_samples": self.n_samples, "dims": {str(k): v for k, v in self.dims.items()},
                "tokens_per_dim": round(self.tokens_per_dim, 3), "short": self.short}


# ----------------------------------------------------------------------------------------------------------
# collecting


def _collect(model: nn.Module, adapter: ArchAdapter, windows: Iterable[list[int]], layers: Sequence[int],
             accum_dtype: torch.dtype, batch_size: int, progress: bool, pad_id: int | None = None,
             total: int | None = None) -> tuple[dict[int, torch.Tensor], int]:
    """One pass per batch over the windows, capturing every layer in ``layers``; stop at the deepest.
    ``pad_id`` set: batches of unequal windows are right-padded and the padding is left out of C."""
    device = model_device(model)
    deepest = max(layers)
    sums: dict[int, torch.Tensor] = {}
    count = 0
    handles = []
    keep: list[torch.Tensor | None] = [None]  # the current batch's non-padding positions (flattened)

    def hook_for(layer: int):
        def hook(_m, args, kwargs):
            x = hidden_arg(args, kwargs)
            x = x.reshape(-1, x.shape[-1])
            if keep[0] is not None:
                x = x[keep[0]]
            x = x.float()  # a bf16/fp16 model's keys: the Gram matrix in float32
            gram = x.T @ x
            del x
            if layer in sums:
                sums[layer].add_(gram)  # in place, in accum_dtype: the same sum as sums + gram.to(accum_dtype)
            else:
                sums[layer] = gram.to(accum_dtype)
            del gram
            if layer == deepest:
                raise _StopForward
        return hook

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"second moments (layers {list(layers)})", file=sys.stderr, unit="tok",
                   leave=False)
    try:
        for layer in layers:
            module = adapter.rewrite_module(model, layer)
            handles.append(module.register_forward_pre_hook(hook_for(layer), with_kwargs=True))
        base = model.base_model
        with torch.no_grad():
            for group in window_batches(windows, batch_size, pad_id is not None):
                width = max(len(w) for w in group)
                kwargs: dict[str, Any] = {}
                if all(len(w) == width for w in group):
                    ids = torch.tensor(group, dtype=torch.long, device=device)
                    keep[0] = None
                    n = ids.numel()
                else:
                    assert pad_id is not None
                    ids = torch.tensor([w + [pad_id] * (width - len(w)) for w in group], dtype=torch.long,
                                       device=device)
                    mask = torch.tensor([[1] * len(w) + [0] * (width - len(w)) for w in group], device=device)
                    kwargs["attention_mask"] = mask
                    keep[0] = mask.reshape(-1).bool()
                    n = int(mask.sum())
                try:
                    base(input_ids=ids, use_cache=False, **kwargs)
                except _StopForward:
                    pass
                count += n
                if bar is not None:
                    bar.update(n)
    finally:
        for h in handles:
            h.remove()
        if bar is not None:
            bar.close()
    return sums, count


def _shortfall_message(corpora: Sequence[str], unit: str, asked: int, counted: int, n_tokens: int) -> str:
    return (f"the statistics corpora {list(corpora)} hold only {counted:,} {unit} ({n_tokens:,} tokens), but "
            f"{asked:,} were asked for (mom2_n_{unit})")


def _low_warning(n_tokens: int, dim: int) -> None:
    ratio = n_tokens / dim
    if ratio >= LOW_TOKENS_PER_DIM:
        return
    lo, hi = (max(0.0, 1 - math.sqrt(1 / ratio)) ** 2, (1 + math.sqrt(1 / ratio)) ** 2) if ratio > 0 else (0, 0)
    warnings.warn(StatsWarning(
        f"statistics: {n_tokens:,} tokens for a {dim}-wide key is {ratio:.1f} tokens per dimension (below "
        f"{LOW_TOKENS_PER_DIM:.0f}); a sample second moment's eigenvalues then scatter by about {lo:.2f}-{hi:.2f}x, "
        "so MEMIT's lambda*C and AlphaEdit's null space rest on a noisy C. The reference code counts 100,000 "
        "Wikipedia articles (1e7-1e8 tokens): raise mom2_n_tokens / mom2_n_samples, with a corpus that holds them "
        "(mom2_dataset: a local file or hf:wikimedia/wikipedia:20231101.en)"), stacklevel=3)


def check_stats_settings(corpora: Sequence[str], n_tokens: int = 100_000, n_samples: int | None = None,
                         **_: Any) -> tuple[str, int, Corpus]:
    """The budget's unit and size and the resolved corpus, or a clear error: cheap, so a caller that computes the
    statistics late (:func:`editdecay.edit.api.edit`) still refuses a bad corpus before any work."""
    from editdecay.errors import ConfigError

    unit, budget = ("samples", n_samples) if n_samples is not None else ("tokens", n_tokens)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"hparams.mom2_n_{unit}: must be a positive integer, got {budget!r}")
    return unit, budget, Corpus(list(corpora))


def second_moments(
    model: nn.Module,
    tok: Any,
    adapter: ArchAdapter,
    layers: Sequence[int],
    *,
    corpora: Sequence[str] = DEFAULT_CORPORA,
    n_tokens: int = 100_000,
    n_samples: int | None = None,
    seq_len: int = 256,
    accum_dtype: str = "float64",
    cache: StatsCache | None = None,
    batch_size: int = 8,
    progress: bool = False,
    allow_short: bool = False,
) -> StatsResult:
    """C for every layer in ``layers``: from the cache where present, the rest in one pass.

    ``n_samples`` set: count that many documents (each cut to ``seq_len`` tokens) instead of ``n_tokens``.
    ``allow_short``: a corpus smaller than the budget gives a warning and ``result.short`` instead of
    :class:`StatsShortfall`.
    """
    start_time = time.perf_counter()
    layers = sorted(set(int(x) for x in layers))
    corpora = list(corpora)
    unit, budget, corpus = check_stats_settings(corpora, n_tokens, n_samples)
    acc = getattr(torch, accum_dtype)
    model_dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    c_hash = corpus.hash()
    hashes = model_layer_hashes(model, adapter, tok, max(layers))

    def keys_for(count: int) -> dict[int, str]:
        return {layer: cache_key(hashes[layer], layer, c_hash, budget_label(unit, count), seq_len, model_dtype,
                                  accum_dtype) for layer in layers}

    asked = keys_for(budget)
    keys = dict(asked)
    cov: dict[int, torch.Tensor] = {}
    metas: dict[int, dict[str, Any]] = {}
    counted: int | None = None  # known short count (from a pointer or this run)
    if cache is not None:
        prefix_len = len(special_prefix(tok))
        for layer in layers:
            pointer = cache.load_shortfall(asked[layer])
            if pointer is not None:
                keys[layer] = keys_for(pointer)[layer]
            got, meta = cache.load(keys[layer]), cache.load_meta(keys[layer])
            if got is None or meta is None or (pointer is None and legacy_short(meta, unit, budget, prefix_len)):
                keys[layer] = asked[layer]
                continue
            cov[layer], metas[layer] = got.to(acc), meta
            counted = pointer if pointer is not None else counted
    hits = sorted(cov)
    missing = [layer for layer in layers if layer not in cov]
    if missing:
        stream = WindowStream(tok, corpus, seq_len, None if unit == "samples" else n_tokens, n_samples)
        pad_id = None
        if unit == "samples":
            pad_id = pad_token_id(tok)
        with frozen(model):
            sums, used = _collect(model, adapter, stream, missing, acc, batch_size, progress, pad_id,
                                  total=n_tokens if unit == "tokens" else None)
        if used == 0:
            raise DataError(",".join(corpora), "the statistics corpora hold no text")
        n_counted, n_windows = used, stream.counted_samples
        if stream.exhausted:
            counted = stream.counted_samples if unit == "samples" else used
        for layer in missing:
            cov[layer] = mirror_upper_(sums.pop(layer).div_(used).to(acc).cpu())  # in place: no second d×d copy
            keys[layer] = keys_for(counted)[layer] if counted is not None else asked[layer]
            if cache is not None:
                dim = cov[layer].shape[0]
                cache.save(keys[layer], cov[layer], {
                    "key": keys[layer], "layer": layer, "model": str(getattr(model.config, "_name_or_path", "")),
                    "model_hash": hashes[layer], "corpora": corpus.describe(), "corpus_hash": c_hash,
                    "n_tokens": used, "n_samples": n_windows, "unit": unit, "budget": budget,
                    "short": counted is not None, "tokens_per_dim": used / dim, "seq_len": seq_len,
                    "model_dtype": model_dtype, "accum_dtype": accum_dtype,
                    "rewrite_module": adapter.rewrite_name(layer), "dim": dim,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                })
                if counted is not None:
                    cache.save_shortfall(asked[layer], counted)
    else:
        meta = metas[layers[0]]
        n_counted, n_windows = int(meta["n_tokens"]), meta.get("n_samples")
    short = None
    if counted is not None:
        short = {"unit": unit, "asked": budget, "counted": counted}
        message = _shortfall_message(corpora, unit, budget, counted, n_counted)
        if not allow_short:
            raise StatsShortfall(",".join(corpora), f"{message}. Give more text (a larger local file, or "
                                 "hf:wikimedia/wikipedia:20231101.en where the hub is reachable), lower the budget, "
                                 "or set mom2_allow_short=true to use what there is (the statistics counted are "
                                 "cached under their own count, and the manifest records the shortfall)")
        warnings.warn(StatsWarning(f"{message}: using them (mom2_allow_short=true); the cache key and stats_id name "
                                   f"the {counted:,} {unit} counted"), stacklevel=2)
    dims = {layer: int(cov[layer].shape[0]) for layer in layers}
    _low_warning(n_counted, max(dims.values()))
    stats_id = stable_hash(sorted(keys.values()))
    return StatsResult(cov, stats_id, keys, n_counted, time.perf_counter() - start_time, hits,
                       n_samples=None if n_windows is None else int(n_windows), unit=unit, requested=budget,
                       dims=dims, tokens_per_dim=n_counted / max(dims.values()), short=short,
                       corpora=corpus.describe())


def second_moments_per_layer(
    model: nn.Module,
    tok: Any,
    adapter: ArchAdapter,
    layers: Sequence[int],
    *,
    corpora: Sequence[str] = DEFAULT_CORPORA,
    n_tokens: int = 100_000,
    n_samples: int | None = None,
    seq_len: int = 256,
    accum_dtype: str = "float64",
    batch_size: int = 8,
    progress: bool = False,
) -> dict[int, torch.Tensor]:
    """The reference code's way: for each layer its own pass over the text (re-tokenised), stopping at that
    layer. Same numbers as :func:`second_moments`, several times the work; no cache."""
    acc = getattr(torch, accum_dtype)
    pad_id = None if n_samples is None else pad_token_id(tok)
    out = {}
    corpus = Corpus(list(corpora))
    with frozen(model):
        for layer in layers:
            stream = WindowStream(tok, corpus, seq_len, None if n_samples is not None else n_tokens, n_samples)
            sums, used = _collect(model, adapter, stream, [layer], acc, batch_size, progress, pad_id)
            out[layer] = (sums[layer] / used).cpu()
    return out
