"""Which matrices were edited, with the base weights (ΔW = W_model − W_base) or without (weights-only statistics).

With a base the answer is exact: every parameter whose bits differ, with the rank and norm of its change
(MEMIT/AlphaEdit leave a change of rank ≤ the number of edits in the MLP output projection of consecutive
layers). Without a base the rewritten projection of each layer is scored by how much of its energy sits in
a few dominant directions, relative to the neighbouring layers (a locate-then-edit update is a low-rank
matrix of large norm added to one that is not): see :func:`weights_only_scores`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from editdecay.errors import ModelError
from editdecay.models.arch import ArchAdapter

_EPS32 = float(torch.finfo(torch.float32).eps)


@dataclass
class MatrixChange:
    """One parameter whose values differ between the model and its base."""

    name: str
    layer: int | None  # decoder layer index, None for parameters outside the layers (embeddings, norms)
    projection: str  # the path inside the layer (e.g. "mlp.down_proj.weight"), or the full name
    shape: list[int]
    n_changed: int  # elements whose bits differ
    norm: float  # ‖ΔW‖_F
    rel_norm: float  # ‖ΔW‖_F / ‖W_base‖_F
    max_abs: float
    rank: int | None = None  # numerical rank of ΔW above the float32 rounding floor (matrices only)
    singular_values: list[float] = field(default_factory=list)  # the largest few σ of ΔW
    is_rewrite: bool = False  # the MLP output projection that MEMIT/AlphaEdit rewrite

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_name(adapter: ArchAdapter, name: str) -> tuple[int | None, str]:
    """'model.layers.4.mlp.down_proj.weight' -> (4, 'mlp.down_proj.weight'); other names -> (None, name)."""
    prefix = adapter.layers + "."
    if name.startswith(prefix):
        head, _, rest = name[len(prefix):].partition(".")
        if head.isdigit():
            return int(head), rest
    return None, name


def numerical_rank(delta: torch.Tensor, reference: torch.Tensor) -> tuple[int, list[float]]:
    """Rank of ``delta`` above the noise that float32 rounding of ``reference + delta`` leaves (and top σ).

    Rounding W + ΔW to float32 adds an error of about eps·|W| per element; a random matrix of such entries
    has a spectral norm near eps·rms(W)·(√m + √n). Singular values below 4× that are rounding, not edit.
    """
    d = delta.detach().double()
    s = torch.linalg.svdvals(d)
    m, n = d.shape
    rms = float(reference.detach().double().pow(2).mean().sqrt())
    floor = 4 * _EPS32 * rms * (math.sqrt(m) + math.sqrt(n))
    rank = int((s > max(floor, float(s[0]) * 1e-7 if len(s) else 0.0)).sum())
    return rank, [float(x) for x in s[:8]]


def diff_changes(model: nn.Module, base: nn.Module, adapter: ArchAdapter) -> list[MatrixChange]:
    """Every parameter of ``model`` that differs from ``base`` bit for bit, with the size and rank of the change."""
    ours = dict(model.named_parameters())
    theirs = dict(base.named_parameters())
    if set(ours) != set(theirs):
        only = sorted(set(ours) ^ set(theirs))[:5]
        raise ModelError(f"the model and the base have different parameters (e.g. {only}): not the same architecture")
    rewrite_names = {adapter.rewrite_name(i) + ".weight" for i in range(adapter.num_layers(model))}
    out: list[MatrixChange] = []
    with torch.no_grad():
        for name, p in ours.items():
            q = theirs[name]
            if tuple(p.shape) != tuple(q.shape):
                raise ModelError(f"parameter {name}: shape {tuple(p.shape)} in the model, {tuple(q.shape)} in the base")
            differs = p.detach() != q.detach().to(p.dtype)
            n_changed = int(differs.sum())
            if n_changed == 0:
                continue
            delta = p.detach().double() - q.detach().double()
            layer, proj = split_name(adapter, name)
            base_norm = float(q.detach().double().norm())
            change = MatrixChange(
                name=name, layer=layer, projection=proj, shape=list(p.shape), n_changed=n_changed,
                norm=float(delta.norm()), rel_norm=float(delta.norm()) / base_norm if base_norm else math.inf,
                max_abs=float(delta.abs().max()), is_rewrite=name in rewrite_names,
            )
            if delta.dim() == 2:
                change.rank, change.singular_values = numerical_rank(delta, q)
            out.append(change)
    return out


def layer_scores_from_changes(changes: list[MatrixChange], n_layers: int) -> list[dict[str, Any]]:
    """Per decoder layer: the relative norm of its change (0 for untouched layers) and what changed."""
    rows = []
    for i in range(n_layers):
        mine = [c for c in changes if c.layer == i]
        rows.append({
            "layer": i,
            "score": math.sqrt(sum(c.rel_norm ** 2 for c in mine)),
            "changed": [c.projection for c in mine],
            "rank": max((c.rank or 0 for c in mine), default=0),
        })
    return rows


# ----------------------------------------------------------------------------------------------------------
# weights only


def rewrite_matrix(model: nn.Module, adapter: ArchAdapter, layer: int) -> torch.Tensor:
    """The rewritten projection of ``layer`` as [out, in] float64."""
    return adapter.as_out_in(adapter.rewrite_weight(model, layer).detach()).double()


WEIGHTS_ONLY_NOTE = ("a statistic, not a proof: on SmolLM2 it flags natural outlier layers (0, 2, 4, 22, 29) and "
                     "misses 1-10 MEMIT/AlphaEdit edits; see docs/erase.md. Pass --layers or --base when known.")
DEFAULT_THRESHOLD = 3.5  # robust z-score (median / MAD of the neighbouring layers) above which a layer is located
SPECTRUM_K = 16  # leading singular values compared
NEIGHBOURS = 6  # layers on each side that form a layer's reference


def spectrum_features(model: nn.Module, adapter: ArchAdapter, k: int = SPECTRUM_K) -> torch.Tensor:
    """[n_layers, k]: log σ_i − log ‖W‖_F of the leading singular values of each rewritten projection.

    Normalising by the Frobenius norm takes out a layer's overall scale, so what remains is the shape of the
    top of the spectrum: a low-rank edit of large norm lifts a few leading σ above their neighbours'.
    """
    rows = []
    for layer in range(adapter.num_layers(model)):
        w = rewrite_matrix(model, adapter, layer)
        s = torch.linalg.svdvals(w)[:k]
        rows.append(torch.log(s) - torch.log(w.norm()))
    return torch.stack(rows)


def outlier_z(features: torch.Tensor, neighbours: int = NEIGHBOURS) -> torch.Tensor:
    """Robust z-score of each layer's features against the median / MAD of the layers within ``neighbours``."""
    n = features.shape[0]
    out = torch.zeros_like(features)
    for i in range(n):
        ref = [j for j in range(max(0, i - neighbours), min(n, i + neighbours + 1)) if j != i]
        if len(ref) < 2:
            continue
        r = features[ref]
        med = r.median(dim=0).values
        mad = (r - med).abs().median(dim=0).values * 1.4826
        out[i] = (features[i] - med) / (mad + 1e-6)
    return out


def weights_only_scores(model: nn.Module, adapter: ArchAdapter, threshold: float = DEFAULT_THRESHOLD,
                        k: int = SPECTRUM_K, neighbours: int = NEIGHBOURS) -> dict[str, Any]:
    """Per layer: the largest robust z of its leading normalised singular values against its neighbours.

    A layer is located when that score exceeds ``threshold``; ``n_outliers`` (how many leading σ exceed it)
    is the number of components a weights-only reversal removes. Without the base this is a statistic, not
    a proof: docs/erase.md gives its measured accuracy.
    """
    z = outlier_z(spectrum_features(model, adapter, k), neighbours)
    rows = []
    for layer in range(z.shape[0]):
        zl = z[layer]
        n_out = 0
        while n_out < len(zl) and float(zl[n_out]) > threshold:  # leading run: the edit's top components
            n_out += 1
        rows.append({"layer": layer, "score": float(zl.max()), "n_outliers": n_out,
                     "z": [round(float(x), 3) for x in zl]})
    located = [r["layer"] for r in rows if r["score"] > threshold]
    return {"statistic": f"max robust z of log(sigma_i/|W|_F), i<{k}, vs layers within {neighbours}",
            "layers": rows, "located_layers": located}


def outlier_count(model: nn.Module, adapter: ArchAdapter, layer: int, threshold: float = DEFAULT_THRESHOLD) -> int:
    """``n_outliers`` of one layer (see :func:`weights_only_scores`)."""
    return weights_only_scores(model, adapter, threshold)["layers"][layer]["n_outliers"]
