"""Second moments C = E[k kᵀ] of the rewritten projection's input over generic text, with a disk cache.

:func:`second_moments` collects every requested layer in ONE forward pass per batch of text, stopping the
pass at the deepest layer's rewritten projection. Each batch's kᵀk is formed in float32 (also for a
bfloat16/float16 model) on the model's device and added to a float64 accumulator (``mom2_dtype``); C is the accumulated sum divided by the token count.
:func:`second_moments_per_layer` is the reference code's way (one pass per layer, each stopping at its
layer) and exists for the benchmark and the equality test.

Text: documents of the named corpora (default WikiText-2 test + the Wikipedia articles), interleaved
round-robin, tokenised, concatenated and cut into ``seq_len``-token windows (each starting with the
tokenizer's prefix specials, e.g. BOS), until ``n_tokens`` tokens.

Cache (:class:`StatsCache`, passed explicitly): one safetensors file + JSON per layer under
``$EDITDECAY_HOME/stats/``, keyed by a hash of the model weights that can influence that layer's keys
(embeddings, layers 0..l, config, tokenizer), the layer, the corpus hash, the token count, the window length
and the dtypes. Files are written atomically; a hit is reused by any later run of the same model.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editdecay.edit.core import _device, _hidden_arg, frozen
from editdecay.errors import DataError
from editdecay.models.arch import ArchAdapter
from editdecay.util.io import atomic_write_bytes, atomic_write_json, read_json, stable_hash

DEFAULT_CORPORA = ("wikitext", "wikipedia")


class _StopForward(Exception):
    pass


# ----------------------------------------------------------------------------------------------------------
# the text


def corpus_documents(corpora: Sequence[str]) -> list[str]:
    """Documents of the named corpora, interleaved round-robin (so a small budget samples all of them)."""
    from editdecay.data.corpora import load_text

    lists = [load_text(name) for name in corpora]
    out: list[str] = []
    for i in range(max((len(x) for x in lists), default=0)):
        for docs in lists:
            if i < len(docs):
                out.append(docs[i])
    if not out:
        raise DataError(",".join(corpora), "the statistics corpora hold no text")
    return out


def corpus_hash(corpora: Sequence[str]) -> str:
    h = hashlib.sha256()
    for doc in corpus_documents(corpora):
        h.update(doc.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def token_windows(tok: Any, corpora: Sequence[str], n_tokens: int, seq_len: int) -> list[list[int]]:
    """Windows of at most ``seq_len`` ids (prefix specials + text) holding ``n_tokens`` ids in total."""
    from editdecay.evaluate.scoring import special_prefix

    prefix = special_prefix(tok)
    body = seq_len - len(prefix)
    if body < 1:
        raise DataError("<stats>", f"seq_len {seq_len} leaves no room for text after the special tokens")
    eos = tok.eos_token_id
    stream: list[int] = []
    needed = n_tokens  # text ids needed (prefixes are counted too, so this is an upper bound)
    for doc in corpus_documents(corpora):
        stream.extend(tok(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(eos)
        if len(stream) >= needed:
            break
    windows: list[list[int]] = []
    total, pos = 0, 0
    while total < n_tokens and pos < len(stream):
        take = min(body, n_tokens - total - len(prefix))
        if take <= 0:
            break
        win = prefix + stream[pos:pos + take]
        pos += take
        windows.append(win)
        total += len(win)
    if total < n_tokens:
        print(f"[editdecay] statistics: the corpora hold only {total} tokens (asked for {n_tokens})", file=sys.stderr)
    return windows


# ----------------------------------------------------------------------------------------------------------
# hashing the model


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous()
    return memoryview(t.view(torch.uint8).numpy().reshape(-1))


def tokenizer_hash(tok: Any) -> str:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps(sorted(tok.get_vocab().items()))
    extra = json.dumps([type(tok).__name__, getattr(tok, "bos_token", None), getattr(tok, "eos_token", None),
                        getattr(tok, "add_bos_token", None)])
    return hashlib.sha256((text + extra).encode("utf-8")).hexdigest()[:16]


def model_layer_hashes(model: nn.Module, adapter: ArchAdapter, tok: Any, upto: int) -> dict[int, str]:
    """{layer l: hash of everything that can change layer l's keys}: config, tokenizer, the parameters
    outside the decoder layers (embeddings; not the final norm or the head), and layers 0..l."""
    config = {k: v for k, v in model.config.to_dict().items()
              if not k.startswith("_") and k not in ("transformers_version", "architectures", "dtype", "torch_dtype")}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode("utf-8"))
    h.update(tokenizer_hash(tok).encode())
    layer_prefix = adapter.layers + "."
    skip = (adapter.final_norm + ".", adapter.unembed + ".")
    per_layer: dict[int, list[tuple[str, torch.Tensor]]] = {}
    for name, p in model.named_parameters():
        if name.startswith(layer_prefix):
            idx = int(name[len(layer_prefix):].split(".", 1)[0])
            per_layer.setdefault(idx, []).append((name, p))
        elif not name.startswith(skip):
            h.update(name.encode())
            h.update(_tensor_bytes(p))
    out = {}
    for layer in range(upto + 1):
        for name, p in sorted(per_layer.get(layer, []), key=lambda x: x[0]):
            h.update(name.encode())
            h.update(_tensor_bytes(p))
        out[layer] = h.copy().hexdigest()[:20]
    return out


# ----------------------------------------------------------------------------------------------------------
# the cache


@dataclass
class StatsCache:
    """Second moments on disk: ``<root>/<key>.safetensors`` + ``<key>.json``. Pass it explicitly."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @classmethod
    def default(cls) -> StatsCache:
        from editdecay.models.registry import editdecay_home

        return cls(editdecay_home() / "stats")

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.safetensors", self.root / f"{key}.json"

    def load(self, key: str) -> torch.Tensor | None:
        tensor_path, meta_path = self._paths(key)
        if not (tensor_path.exists() and meta_path.exists()):
            return None
        from safetensors.torch import load_file

        try:
            return load_file(str(tensor_path))["mom2"]
        except Exception:  # noqa: BLE001 - a damaged file is a miss; it is rewritten
            return None

    def save(self, key: str, mom2: torch.Tensor, meta: dict[str, Any]) -> None:
        from safetensors.torch import save

        tensor_path, meta_path = self._paths(key)
        atomic_write_bytes(tensor_path, save({"mom2": mom2.contiguous()}, metadata={"key": key}))
        atomic_write_json(meta_path, meta)  # written last: its presence marks a complete entry

    def entries(self) -> list[dict[str, Any]]:
        if not self.root.exists():
            return []
        return [read_json(p) for p in sorted(self.root.glob("*.json"))]


@dataclass
class StatsResult:
    cov: dict[int, torch.Tensor]  # layer -> C [d_in, d_in] float64
    stats_id: str
    keys: dict[int, str]  # layer -> cache key
    n_tokens: int
    seconds: float
    from_cache: list[int] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------
# collecting


def _collect(model: nn.Module, adapter: ArchAdapter, windows: list[list[int]], layers: Sequence[int],
             accum_dtype: torch.dtype, batch_size: int, progress: bool) -> tuple[dict[int, torch.Tensor], int]:
    """One pass per batch over the windows, capturing every layer in ``layers``; stop at the deepest."""
    device = _device(model)
    deepest = max(layers)
    sums: dict[int, torch.Tensor] = {}
    count = 0
    handles = []

    def hook_for(layer: int):
        def hook(_m, args, kwargs):
            x = _hidden_arg(args, kwargs)
            x = x.reshape(-1, x.shape[-1]).float()  # a bf16/fp16 model's keys: the Gram matrix in float32
            gram = (x.T @ x).to(accum_dtype)
            sums[layer] = sums[layer] + gram if layer in sums else gram
            if layer == deepest:
                raise _StopForward
        return hook

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(w) for w in windows), desc=f"second moments (layers {list(layers)})",
                   file=sys.stderr, unit="tok", leave=False)
    try:
        for layer in layers:
            module = adapter.rewrite_module(model, layer)
            handles.append(module.register_forward_pre_hook(hook_for(layer), with_kwargs=True))
        base = model.base_model
        # group windows of equal length so no padding is needed
        by_len: dict[int, list[list[int]]] = {}
        for w in windows:
            by_len.setdefault(len(w), []).append(w)
        with torch.no_grad():
            for _length, group in sorted(by_len.items(), reverse=True):
                for lo in range(0, len(group), batch_size):
                    ids = torch.tensor(group[lo:lo + batch_size], dtype=torch.long, device=device)
                    try:
                        base(input_ids=ids, use_cache=False)
                    except _StopForward:
                        pass
                    count += ids.numel()
                    if bar is not None:
                        bar.update(ids.numel())
    finally:
        for h in handles:
            h.remove()
        if bar is not None:
            bar.close()
    return sums, count


def _cache_key(layer_hash: str, layer: int, corpus: str, n_tokens: int, seq_len: int, model_dtype: str,
               accum: str) -> str:
    return f"{layer_hash}-L{layer}-{corpus}-{n_tokens}-{seq_len}-{model_dtype}-{accum}"


def second_moments(
    model: nn.Module,
    tok: Any,
    adapter: ArchAdapter,
    layers: Sequence[int],
    *,
    corpora: Sequence[str] = DEFAULT_CORPORA,
    n_tokens: int = 100_000,
    seq_len: int = 256,
    accum_dtype: str = "float64",
    cache: StatsCache | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> StatsResult:
    """C for every layer in ``layers``: from the cache where present, the rest in one pass."""
    start_time = time.perf_counter()
    layers = sorted(set(int(x) for x in layers))
    corpora = list(corpora)
    acc = getattr(torch, accum_dtype)
    model_dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    c_hash = corpus_hash(corpora)
    hashes = model_layer_hashes(model, adapter, tok, max(layers))
    keys = {layer: _cache_key(hashes[layer], layer, c_hash, n_tokens, seq_len, model_dtype, accum_dtype)
            for layer in layers}
    cov: dict[int, torch.Tensor] = {}
    hits: list[int] = []
    if cache is not None:
        for layer in layers:
            got = cache.load(keys[layer])
            if got is not None:
                cov[layer] = got.to(acc)
                hits.append(layer)
    missing = [layer for layer in layers if layer not in cov]
    used = n_tokens
    if missing:
        windows = token_windows(tok, corpora, n_tokens, seq_len)
        with frozen(model):
            sums, used = _collect(model, adapter, windows, missing, acc, batch_size, progress)
        for layer in missing:
            cov[layer] = (sums[layer] / used).to(acc).cpu()
            if cache is not None:
                cache.save(keys[layer], cov[layer], {
                    "key": keys[layer], "layer": layer, "model": str(getattr(model.config, "_name_or_path", "")),
                    "model_hash": hashes[layer], "corpora": corpora, "corpus_hash": c_hash, "n_tokens": used,
                    "seq_len": seq_len, "model_dtype": model_dtype, "accum_dtype": accum_dtype,
                    "rewrite_module": adapter.rewrite_name(layer), "dim": cov[layer].shape[0],
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                })
    stats_id = stable_hash(sorted(keys.values()))
    return StatsResult(cov, stats_id, keys, used, time.perf_counter() - start_time, hits)


def second_moments_per_layer(
    model: nn.Module,
    tok: Any,
    adapter: ArchAdapter,
    layers: Sequence[int],
    *,
    corpora: Sequence[str] = DEFAULT_CORPORA,
    n_tokens: int = 100_000,
    seq_len: int = 256,
    accum_dtype: str = "float64",
    batch_size: int = 8,
    progress: bool = False,
) -> dict[int, torch.Tensor]:
    """The reference code's way: for each layer its own pass over the text (re-tokenised), stopping at that
    layer. Same numbers as :func:`second_moments`, several times the work; no cache."""
    acc = getattr(torch, accum_dtype)
    out = {}
    with frozen(model):
        for layer in layers:
            windows = token_windows(tok, list(corpora), n_tokens, seq_len)
            sums, used = _collect(model, adapter, windows, [layer], acc, batch_size, progress)
            out[layer] = (sums[layer] / used).cpu()
    return out

