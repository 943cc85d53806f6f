"""AlphaEdit's update rule (Fang et al., ICLR 2025): edits projected onto the null space of preserved keys.

P projects onto the span of the eigenvectors of C = E[k kᵀ] whose eigenvalues are below
``nullspace_threshold`` (the reference code takes the SVD of C; C is symmetric PSD so ``eigh`` gives the
same vectors faster). The update is

    ΔW = R Kᵀ P (K Kᵀ P + K_p K_pᵀ P + α I)⁻¹

with K_p the keys of earlier edits (accumulated over sequential batches in :class:`AlphaEditState`) and
α = ``L2``. Solved in float64 as (P (KKᵀ + K_pK_pᵀ) + αI) Y = P K, ΔW = R Yᵀ (the reference solves for
X = Y Rᵀ and takes ΔW = Xᵀ: the same matrix).
P is stored as its basis U₀ (P = U₀U₀ᵀ) when the kept rank is at most half the dimension. The
eigendecomposition and the solves run on the device they are given (the model's: see :func:`AlphaEditState.from_stats`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from editdecay.edit.linalg import solve_checked
from editdecay.edit.stats_cache import mirror_upper_, pack_symmetric, unpack_symmetric
from editdecay.errors import ConfigError


@dataclass
class NullSpaceProjection:
    """P = U₀U₀ᵀ, stored as the basis U₀ [d, k] when k <= d/2, else as the full matrix [d, d]."""

    dim: int
    rank: int
    basis: torch.Tensor | None = None
    full: torch.Tensor | None = None

    @classmethod
    def from_cov(cls, cov: torch.Tensor, threshold: float, device: torch.device | str | None = None
                 ) -> NullSpaceProjection:
        cov = cov.to(device=device or cov.device, dtype=torch.float64)
        cov = (cov + cov.T) / 2
        eigvals, eigvecs = torch.linalg.eigh(cov)
        keep = eigvals < threshold
        u0 = eigvecs[:, keep].contiguous()
        d, k = cov.shape[0], int(keep.sum())
        if k <= d // 2:
            return cls(d, k, basis=u0)
        return cls(d, k, full=u0 @ u0.T)

    def matrix(self) -> torch.Tensor:
        if self.full is not None:
            return self.full
        assert self.basis is not None
        return self.basis @ self.basis.T

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """P @ x."""
        if self.full is not None:
            return self.full.to(x.device) @ x
        assert self.basis is not None
        u0 = self.basis.to(x.device)
        return u0 @ (u0.T @ x)


def alphaedit_factors(keys: torch.Tensor, resid: torch.Tensor, proj: NullSpaceProjection | torch.Tensor,
                      prev_cov: torch.Tensor | None, alpha: float, *, what: str = "AlphaEdit update"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(R [d_out, n], Yᵀ [n, d_in]) with ΔW = R Yᵀ, from (P(KKᵀ + K_pK_pᵀ) + αI) Y = P K (float64).

    The reference solves for X = Y Rᵀ (d_out right-hand sides); solving for Y (n of them) is the same ΔW = Xᵀ,
    cheaper, and keeps the update's rank-n factors (:mod:`editdecay.deltas` stores them)."""
    keys, resid = keys.double(), resid.double()
    if isinstance(proj, torch.Tensor):
        apply = lambda x: proj.double().to(x.device) @ x  # noqa: E731
    else:
        apply = proj.apply
    m = keys @ keys.T
    if prev_cov is not None:
        m = m + prev_cov.double().to(m.device)
    eye = torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    a = apply(m) + alpha * eye
    y = solve_checked(a, apply(keys), what=what)  # [d_in, n]
    return resid, y.T


@dataclass
class AlphaEditState:
    """What AlphaEdit carries between sequential batches: P per layer and the accumulated K_p K_pᵀ."""

    threshold: float
    projections: dict[int, NullSpaceProjection]
    prev_cov: dict[int, torch.Tensor] = field(default_factory=dict)
    n_edits: int = 0
    stats_id: str = ""

    @classmethod
    def from_stats(cls, cov: dict[int, torch.Tensor], threshold: float, stats_id: str = "",
                   device: torch.device | str | None = None) -> AlphaEditState:
        """Projections from C per layer, decomposed on ``device`` (default: where C is; pass the model's)."""
        return cls(threshold, {layer: NullSpaceProjection.from_cov(c, threshold, device) for layer, c in cov.items()},
                   stats_id=stats_id)

    def check(self, layers: list[int], threshold: float) -> None:
        missing = [layer for layer in layers if layer not in self.projections]
        if missing:
            raise ConfigError(f"AlphaEdit state has no projection for layers {missing}; it was built for "
                              f"{sorted(self.projections)}")
        if abs(threshold - self.threshold) > 1e-12 * max(1.0, abs(threshold)):
            raise ConfigError(f"AlphaEdit state was built with nullspace_threshold {self.threshold}, "
                              f"but the hparams say {threshold}")

    def ranks(self) -> dict[int, int]:
        return {layer: p.rank for layer, p in self.projections.items()}

    def save(self, path: str | Path) -> None:
        """One safetensors file (projections and K_pK_pᵀ) with the scalars in its metadata."""
        from safetensors.torch import save

        from editdecay.util.io import atomic_write_bytes

        tensors: dict[str, torch.Tensor] = {}
        for layer, p in self.projections.items():
            if p.basis is not None:
                tensors[f"basis.{layer}"] = p.basis.cpu().contiguous()
            else:
                tensors[f"full.{layer}"] = p.full.cpu().contiguous()
        for layer, c in self.prev_cov.items():  # K_pK_pᵀ: its upper triangle where it is symmetric bit for bit
            c = c.cpu()
            if torch.equal(c, c.T):
                tensors[f"prev_cov_upper.{layer}"] = pack_symmetric(c)
            else:
                tensors[f"prev_cov.{layer}"] = c.contiguous()
        meta = {"threshold": repr(self.threshold), "n_edits": str(self.n_edits), "stats_id": self.stats_id}
        atomic_write_bytes(path, save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> AlphaEditState:
        from safetensors import safe_open

        projections: dict[int, NullSpaceProjection] = {}
        prev: dict[int, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            for key in fh.keys():
                kind, layer_s = key.split(".")
                layer, t = int(layer_s), fh.get_tensor(key)
                if kind == "basis":
                    projections[layer] = NullSpaceProjection(t.shape[0], t.shape[1], basis=t)
                elif kind == "full":
                    rank = int(round(torch.trace(t).item()))
                    projections[layer] = NullSpaceProjection(t.shape[0], rank, full=t)
                elif kind == "prev_cov_upper":
                    prev[layer] = unpack_symmetric(t)
                else:
                    prev[layer] = t
        return cls(float(meta.get("threshold", "0.02")), projections, prev, int(meta.get("n_edits", "0")),
                   meta.get("stats_id", ""))


@dataclass
class AlphaEditRule:
    """AlphaEdit as an :class:`~editdecay.edit.spread.UpdateRule` over an explicit :class:`AlphaEditState`."""

    state: AlphaEditState
    L2: float
    wants_final_keys: bool = True

    def factors(self, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return alphaedit_factors(keys, resid, self.state.projections[layer], self.state.prev_cov.get(layer),
                                 self.L2, what=f"layer {layer}")

    def after_edit(self, keys: dict[int, torch.Tensor]) -> None:
        """Remember this batch's keys (computed on the edited model, as the reference code does)."""
        for layer, k in keys.items():
            kkt = mirror_upper_(k @ k.T)  # symmetric bit for bit (a matrix product need not be): stored packed
            self.state.prev_cov[layer] = self.state.prev_cov[layer] + kkt if layer in self.state.prev_cov else kkt
        self.state.n_edits += next(iter(keys.values())).shape[1] if keys else 0


STATE = AlphaEditState


def build_rule(hp: Any, stats: Any, *, state: AlphaEditState | None = None, device: Any = None,
               timings: dict[str, float] | None = None, log: Callable[[str], None] | None = None
               ) -> tuple[AlphaEditRule, AlphaEditState]:
    """The registry's factory (:mod:`editdecay.edit.registry`): a fresh state from ``stats`` (projections
    decomposed on ``device``) unless one is given to continue a sequence; its time goes to ``timings["projection"]``."""
    t = time.perf_counter()
    if state is None:
        state = AlphaEditState.from_stats({layer: stats.cov[layer] for layer in hp.layers},
                                          hp.nullspace_threshold, stats.stats_id, device=device)
    state.check(hp.layers, hp.nullspace_threshold)
    rule = AlphaEditRule(state, hp.L2)
    if timings is not None:
        timings["projection"] = time.perf_counter() - t
    if log:
        log(f"null-space ranks {state.ranks()} (threshold {hp.nullspace_threshold})")
    return rule, state
