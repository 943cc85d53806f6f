"""The second-moment cache on disk: what a statistics entry is keyed by, and where it is kept.

One safetensors file + JSON per layer under ``$EDITDECAY_HOME/stats/`` (:class:`StatsCache`, passed
explicitly), keyed (:func:`cache_key`) by a hash of the model weights that can influence that layer's keys
(:func:`model_layer_hashes`: embeddings, layers 0..l, config, tokenizer), the layer, the corpus hash, the budget
met, the window length and the dtypes. Files are written atomically, the JSON last, so a half-written entry never
looks complete; a damaged one is a miss and is rewritten. A corpus that fell short of the asked budget leaves a
pointer (``<asked key>.shortfall``) to the count actually used, so the next run finds that entry.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editdecay.models.arch import ArchAdapter
from editdecay.util.io import atomic_write_bytes, atomic_write_json, read_json

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
# keys


def cache_key(layer_hash: str, layer: int, corpus: str, budget: int | str, seq_len: int, model_dtype: str,
              accum: str) -> str:
    """The key of one layer's entry: the model hash up to that layer, the layer, the corpus hash, the budget met
    (:func:`budget_label`), the window length and the dtypes."""
    return f"{layer_hash}-L{layer}-{corpus}-{budget}-{seq_len}-{model_dtype}-{accum}"


def budget_label(unit: str, count: int) -> str:
    """A budget as a key names it: ``<n>s`` for samples, ``<n>`` for tokens."""
    return f"{count}s" if unit == "samples" else str(count)  # token keys keep the earlier form


def legacy_short(meta: Mapping[str, Any], unit: str, budget: int, prefix_len: int) -> bool:
    """An entry written before shortfalls were keyed by what was counted: it sits under the asked count."""
    if "budget" in meta or unit != "tokens":
        return bool(meta.get("short", False))
    return int(meta.get("n_tokens", budget)) + prefix_len < budget


# ----------------------------------------------------------------------------------------------------------
# the cache


def pack_symmetric(matrix: torch.Tensor) -> torch.Tensor:
    """The upper triangle of a symmetric d×d matrix, row by row (d(d+1)/2 values): a second moment stored in
    half the bytes, exactly. Refuses a matrix that is not exactly symmetric (its lower half would be lost)."""
    n = matrix.shape[0]
    if matrix.dim() != 2 or matrix.shape[1] != n or not torch.equal(matrix, matrix.T):
        raise ValueError(f"pack_symmetric: a symmetric square matrix is needed, got shape {tuple(matrix.shape)}")
    return torch.cat([matrix[i, i:] for i in range(n)]) if n else matrix.reshape(0)


def mirror_upper_(matrix: torch.Tensor) -> torch.Tensor:
    """Copy the upper triangle onto the lower, in place: a sum of outer products is symmetric in exact arithmetic,
    and this makes it so bit for bit (a no-op where it already is), so the packed form loses nothing."""
    for i in range(matrix.shape[0] - 1):
        matrix[i + 1:, i] = matrix[i, i + 1:]
    return matrix


def unpack_symmetric(packed: torch.Tensor) -> torch.Tensor:
    """The d×d matrix back from :func:`pack_symmetric`, bit for bit."""
    n = int(round((math.sqrt(8 * packed.numel() + 1) - 1) / 2))
    if n * (n + 1) // 2 != packed.numel():
        raise ValueError(f"unpack_symmetric: {packed.numel()} values are not the upper triangle of a square matrix")
    out = torch.empty(n, n, dtype=packed.dtype)
    start = 0
    for i in range(n):
        row = packed[start:start + n - i]
        out[i, i:] = row
        out[i:, i] = row
        start += n - i
    return out


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
            tensors = load_file(str(tensor_path))
            if "mom2" in tensors:  # written before the packed form
                return tensors["mom2"]
            return unpack_symmetric(tensors["mom2_upper"])
        except Exception:  # noqa: BLE001 - a damaged file is a miss; it is rewritten
            return None

    def load_meta(self, key: str) -> dict[str, Any] | None:
        path = self._paths(key)[1]
        try:
            return read_json(path) if path.exists() else None
        except Exception:  # noqa: BLE001 - a damaged file is a miss
            return None

    def save(self, key: str, mom2: torch.Tensor, meta: dict[str, Any]) -> None:
        from safetensors.torch import save

        tensor_path, meta_path = self._paths(key)
        packed = pack_symmetric(mom2)
        atomic_write_bytes(tensor_path, save({"mom2_upper": packed}, metadata={"key": key, "dim": str(mom2.shape[0])}))
        atomic_write_json(meta_path, meta)  # written last: its presence marks a complete entry

    def save_shortfall(self, asked_key: str, counted: int) -> None:
        """Remember that the corpus behind ``asked_key`` held only ``counted`` (tokens or samples)."""
        atomic_write_json(self.root / f"{asked_key}.shortfall", {"asked_key": asked_key, "counted": int(counted)})

    def load_shortfall(self, asked_key: str) -> int | None:
        path = self.root / f"{asked_key}.shortfall"
        try:
            return int(read_json(path)["counted"]) if path.exists() else None
        except Exception:  # noqa: BLE001 - a damaged pointer is ignored; the statistics are recounted
            return None

    def entries(self) -> list[dict[str, Any]]:
        if not self.root.exists():
            return []
        return [read_json(p) for p in sorted(self.root.glob("*.json"))]


__all__ = ["StatsCache", "mirror_upper_", "pack_symmetric", "unpack_symmetric", "cache_key", "budget_label", "legacy_short", "model_layer_hashes", "tokenizer_hash"]
