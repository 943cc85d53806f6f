"""The deltas file (an edit folder's ``deltas.safetensors``): each rewritten weight's ΔW, dense or as its factors.

MEMIT's and AlphaEdit's updates are ΔW = L R with L [d_out, n] and R [n, d_in] (n = the batch's edits), so a
batch's update has rank at most n. A weight whose factors take fewer bytes than the dense float32 ΔW is stored
as them, exactly: the factors are kept in float64 as solved, and the edit itself writes
``float32(L R)`` computed by :func:`lowrank_product` on the CPU, the function every reader calls, so the model
edited in memory and the one rebuilt from the file hold the same bits (on the same machine). Sequential batches
are summed in float32 in their order, as the edit sums them. At 100 edits of SmolLM2's 576 x 1,536 projection the
factors take 0.48x the dense bytes, at 10 edits 0.05x; a weight whose edits outnumber the break-even rank
(d_out d_in / (2 (d_out + d_in)): 209 there, about 1,490 for Llama-2-7B's MLP) is stored dense.

Keys: ``<parameter name>`` for a dense ΔW (float32), ``<parameter name>@<batch>.left`` / ``.right`` for the
factors of one batch (float64). Older files hold dense keys only and load as before.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from editdecay.errors import ModelError

Factors = Sequence[tuple[Any, Any]]  # per batch, in order: (left [rows, n], right [n, cols]) float64


def lowrank_product(left: Any, right: Any) -> Any:
    """float32(left @ right), the product computed in float64 on the CPU from contiguous factors: the one
    place a factored ΔW becomes dense, shared by the edit (what it writes into the model) and every reader."""
    import torch

    left = left.detach().to(device="cpu", dtype=torch.float64).contiguous()
    right = right.detach().to(device="cpu", dtype=torch.float64).contiguous()
    return (left @ right).to(torch.float32)


def dense_from_factors(factors: Factors) -> Any:
    """Σ float32(L_i R_i) over the batches, summed in float32 in their order (as the edit sums them)."""
    total = None
    for left, right in factors:
        part = lowrank_product(left, right)
        total = part if total is None else total + part
    return total


def factor_bytes(factors: Factors) -> int:
    return sum(8 * (left.shape[0] * left.shape[1] + right.shape[0] * right.shape[1]) for left, right in factors)


def encode(deltas: Mapping[str, Any], factors: Mapping[str, Factors] | None = None) -> dict[str, Any]:
    """The tensors to save: the factors of a weight where they are smaller than its dense float32 ΔW."""
    import torch

    out: dict[str, Any] = {}
    for name, delta in deltas.items():
        parts = (factors or {}).get(name)
        if parts and factor_bytes(parts) < 4 * delta.numel():
            for i, (left, right) in enumerate(parts):
                out[f"{name}@{i}.left"] = left.detach().to(device="cpu", dtype=torch.float64).contiguous()
                out[f"{name}@{i}.right"] = right.detach().to(device="cpu", dtype=torch.float64).contiguous()
        else:
            out[name] = delta.detach().float().contiguous().cpu()
    return out


def decode(tensors: Mapping[str, Any], source: str = "<deltas>") -> dict[str, Any]:
    """{parameter name: dense float32 ΔW} from the saved tensors (dense keys and factor keys alike)."""
    dense: dict[str, Any] = {}
    parts: dict[str, dict[int, dict[str, Any]]] = {}
    for key, tensor in tensors.items():
        if "@" not in key:
            dense[key] = tensor
            continue
        name, _, tail = key.rpartition("@")
        batch, _, side = tail.partition(".")
        if not batch.isdigit() or side not in ("left", "right"):
            raise ModelError(f"{source}: tensor {key!r}: not a delta key (expected <name>@<batch>.left|right)")
        parts.setdefault(name, {}).setdefault(int(batch), {})[side] = tensor
    for name, batches in parts.items():
        if name in dense:
            raise ModelError(f"{source}: {name!r} is stored both dense and as factors")
        pairs = []
        for batch in sorted(batches):
            sides = batches[batch]
            if set(sides) != {"left", "right"}:
                raise ModelError(f"{source}: {name!r} batch {batch}: factor 'left' or 'right' is missing")
            left, right = sides["left"], sides["right"]
            if left.dim() != 2 or right.dim() != 2 or left.shape[1] != right.shape[0]:
                raise ModelError(f"{source}: {name!r} batch {batch}: factors of shapes {tuple(left.shape)} and "
                                 f"{tuple(right.shape)} do not multiply")
            pairs.append((left, right))
        dense[name] = dense_from_factors(pairs)
    return dense


def save_deltas(path: str | os.PathLike, deltas: Mapping[str, Any], factors: Mapping[str, Factors] | None = None
                ) -> None:
    """Write the deltas file atomically (dense or factored per weight, see the module docstring)."""
    from safetensors.torch import save

    from editdecay.util.io import atomic_write_bytes

    atomic_write_bytes(path, save(encode(deltas, factors), metadata={"format": "editdecay-deltas-2"}))


def load_deltas_file(path: str | os.PathLike) -> dict[str, Any]:
    """{parameter name: dense float32 ΔW} from a deltas file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path} not found: not an edit folder")
    return decode(load_file(str(path)), source=str(path))
