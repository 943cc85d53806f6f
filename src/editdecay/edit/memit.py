"""MEMIT's update rule (Meng et al. 2022, eq. 14): ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹.

K [d_in, n] are the keys of the edited facts, R [d_out, n] the residuals this layer must add, C = E[k kᵀ]
the second moment of the layer's keys over generic text and λ = ``mom2_update_weight``. Computed in float64
with a linear solve (never an explicit inverse); the system is symmetric positive definite. The solve runs
on the keys' device (the model's), so a GPU edit never moves d×d systems to the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from editdecay.edit.linalg import solve_checked
from editdecay.errors import ConfigError

STATE = None  # MEMIT keeps no state between sequential batches


def memit_factors(keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor, lam: float, *,
                  max_condition: float | None = None, what: str = "MEMIT update") -> tuple[torch.Tensor, torch.Tensor]:
    """(R [d_out, n], Xᵀ [n, d_in]) with ΔW = R Xᵀ, from the solve (λC + KKᵀ) X = K (float64)."""
    keys, resid, cov = keys.double(), resid.double(), cov.double().to(keys.device)
    a = lam * cov + keys @ keys.T
    adj = solve_checked(a, keys, what=what, max_condition=max_condition, symmetric=True)  # [d_in, n]
    return resid, adj.T


@dataclass
class MemitRule:
    """MEMIT as an :class:`~editdecay.edit.spread.UpdateRule`: ``cov`` maps layer -> C (float64)."""

    cov: dict[int, torch.Tensor]
    mom2_update_weight: float
    max_condition: float | None = None
    wants_final_keys: bool = False
    _on_device: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)  # C moved once per layer

    def factors(self, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cov = self._on_device.get(layer)
        if cov is None or cov.device != keys.device:
            cov = self._on_device[layer] = self.cov[layer].to(device=keys.device, dtype=torch.float64)
        return memit_factors(keys, resid, cov, self.mom2_update_weight,
                             max_condition=self.max_condition, what=f"layer {layer}")

    def after_edit(self, keys: dict[int, torch.Tensor]) -> None:  # MEMIT keeps no state between batches
        return None


def build_rule(hp: Any, stats: Any, *, state: Any = None, device: Any = None, timings: dict[str, float] | None = None,
               log: Callable[[str], None] | None = None) -> tuple[MemitRule, None]:
    """The registry's factory (:mod:`editdecay.edit.registry`): MEMIT over the second moments ``stats.cov``."""
    if state is not None:
        raise ConfigError("state is AlphaEdit's; MEMIT keeps no state between batches")
    return MemitRule(stats.cov, hp.mom2_update_weight, hp.max_condition), None
