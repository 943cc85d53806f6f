"""Null-space fine-tuning: updates to a rewritten projection leave its outputs for the edit keys unchanged.

AlphaEdit projects an edit's ΔW onto the null space of the keys it must preserve; here the roles swap: the
fine-tuning update of each rewritten projection is projected onto the null space of the *edit's* keys, so
ΔW_ft · K_edit = 0 and the projection maps every edit key exactly as the edited model did. With
Q an orthonormal basis of span(K_edit) (from an SVD, = the range of K(KᵀK)⁺Kᵀ) and P = I − QQᵀ on the input side:

- full fine-tuning: after every optimizer step, W ← W₀ + (W − W₀)P in the [out, in] orientation (``as_out_in``
  / ``to_stored`` handle GPT-2's transposed Conv1D). Projecting W − W₀ rather than the step is idempotent, so
  AdamW's moments, weight decay and clipping need no special care. The projection's bias is frozen: a changed
  bias would move the output for every key.
- LoRA: the merged update is s·BA, so A ← AP after every step (and once at the start) gives s·BAK = 0 for any B.
- DoRA: the merged weight is m ⊙ (W + s·BA)/‖W + s·BA‖ (row norms); with AK = 0 its output for a key is still
  rescaled row by row unless m = ‖W + s·BA‖. So on a rewritten projection the magnitude is not trained but
  tied to that norm after each step: there DoRA's merged update equals LoRA's, which is what the constraint
  leaves. Other projections keep ordinary DoRA.

The keys are the edit's own (the editor's :func:`editdecay.edit.keys.subject_pass` over the manifest's records
and context templates), computed on the model as fine-tuning starts: ``mean`` = the template-averaged keys the
edit was solved for, ``prompts`` = every (request × template) key, a larger subspace that also pins the keys of
the individual prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from editdecay.errors import ConfigError
from editdecay.models.arch import get_adapter
from editdecay.preserve.spec import EditSpec

RANK_RTOL = 1e-6  # singular values below this fraction of the largest are not part of span(K)


def edit_keys(model: nn.Module, tok: Any, spec: EditSpec, which: str = "mean") -> dict[str, torch.Tensor]:
    """{rewritten parameter name: keys [n, d_in] (float64)} at each rewritten projection's input."""
    from editdecay.data.tokens import pad_token_id as _pad_id
    from editdecay.edit.hooks import frozen
    from editdecay.edit.keys import subject_pass
    from editdecay.edit.prompts import Encoder, SubjectPrompts

    if which not in ("mean", "prompts"):
        raise ConfigError(f"fine-tuning setting 'nullspace_keys' = {which!r}: use mean or prompts")
    adapter = get_adapter(model)
    templates = spec.need("context_templates", spec.templates)
    prompts = SubjectPrompts.build(Encoder(tok), spec.requests(), templates)
    layers = sorted(set(spec.rewritten.values()))
    was_training = model.training
    model.eval()
    try:
        with frozen(model):
            res = subject_pass(model, adapter, prompts, key_layers=layers, pad_id=_pad_id(tok))
    finally:
        model.train(was_training)
    out = {}
    for name, layer in spec.rewritten.items():
        rows = res.keys[layer]
        out[name] = (prompts.average_keys(rows) if which == "mean" else rows).double()
    return out


def key_basis(keys: torch.Tensor, rtol: float = RANK_RTOL) -> torch.Tensor:
    """Orthonormal basis Q [d_in, r] of the span of the keys [n, d_in] (I − QQᵀ = I − K(KᵀK)⁺Kᵀ)."""
    _, s, vh = torch.linalg.svd(keys.double(), full_matrices=False)
    keep = s > rtol * s.max().clamp_min(1e-300)
    return vh[keep].T.contiguous()


def output_change(delta_out_in: torch.Tensor, keys: torch.Tensor) -> float:
    """‖ΔW K‖_F / (‖ΔW‖_F ‖K‖_F): how much an update moves the outputs for the keys, relative to its size."""
    d, k = delta_out_in.double(), keys.double().T.to(delta_out_in.device)
    denom = float(torch.linalg.matrix_norm(d) * torch.linalg.matrix_norm(k))
    return float(torch.linalg.matrix_norm(d @ k)) / denom if denom > 0 else 0.0


@dataclass
class _Target:
    name: str  # the rewritten weight's parameter name (in the plain model)
    q: torch.Tensor  # [d_in, r] float32 on the weight's device
    kind: str  # "full" | "lora" | "dora"
    param: nn.Parameter  # full: the weight; lora/dora: lora_A's weight [r, d_in]
    start: torch.Tensor | None = None  # full: W₀ (stored orientation)
    layer: Any = None  # lora/dora: the PEFT layer (for B, scaling, the base weight, the magnitude)


@dataclass
class NullspaceConstraint:
    """Keeps every trained rewritten projection's update in the null space of its edit keys."""

    bases: dict[str, torch.Tensor]  # rewritten parameter name -> Q [d_in, r] (float64)
    targets: list[_Target] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    adapter: Any = None  # full fine-tuning: the ArchAdapter (its as_out_in / to_stored handle Conv1D)

    @classmethod
    def from_keys(cls, keys: dict[str, torch.Tensor]) -> NullspaceConstraint:
        return cls({name: key_basis(k) for name, k in keys.items()})

    def ranks(self) -> dict[str, int]:
        return {name: int(q.shape[1]) for name, q in self.bases.items()}

    # ------------------------------------------------------------------------------------------------
    def attach_full(self, model: nn.Module) -> None:
        """Full fine-tuning: constrain the trained rewritten weights; freeze their biases."""
        adapter = get_adapter(model)
        params = dict(model.named_parameters())
        for name, q in self.bases.items():
            weight = params[name]
            bias_name = name.rsplit(".", 1)[0] + ".bias"
            if bias_name in params and params[bias_name].requires_grad:
                params[bias_name].requires_grad_(False)
                self.frozen.append(bias_name)
            if weight.requires_grad:
                self.targets.append(_Target(name, q.to(weight.device, torch.float32), "full", weight,
                                            start=weight.detach().float().clone()))
        self.adapter = adapter

    def attach_peft(self, peft_model: nn.Module, adapter_name: str = "default") -> None:
        """LoRA/DoRA: constrain lora_A of every adapted rewritten projection (and tie DoRA's magnitude)."""
        modules = dict(peft_model.named_modules())
        for name, q in self.bases.items():
            module_name = name.rsplit(".", 1)[0]
            layer = modules.get(f"base_model.model.{module_name}")
            if layer is None or not hasattr(layer, "lora_A") or adapter_name not in layer.lora_A:
                continue  # this rewritten projection has no adapter in this run: nothing trains it
            a = layer.lora_A[adapter_name].weight
            dora = adapter_name in getattr(layer, "lora_magnitude_vector", {})
            if dora:
                magnitude = layer.lora_magnitude_vector[adapter_name].weight
                magnitude.requires_grad_(False)
                self.frozen.append(f"{module_name}.lora_magnitude_vector.{adapter_name}.weight")
            self.targets.append(_Target(name, q.to(a.device, torch.float32), "dora" if dora else "lora", a,
                                        layer=(layer, adapter_name)))
        self.project()  # A starts in the null space too (B = 0 at init, so nothing has changed yet)

    @property
    def constrained(self) -> list[str]:
        return [t.name for t in self.targets]

    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def project(self, resolve: Any = None) -> None:
        """Project every constrained update back onto the null space of its keys (call after each step).

        ``resolve(param)``: the tensor the optimizer updates for ``param`` (a float32 master of a bf16 weight);
        the projection is applied there, so the constraint is exact on the masters and holds to the
        model dtype's rounding after they are copied into the model.
        """
        for t in self.targets:
            p = resolve(t.param) if resolve is not None else t.param
            if t.kind == "full":
                d = p.float() - t.start.float()
                corr = (self.adapter.as_out_in(d) @ t.q) @ t.q.T
                p.copy_((p.float() - self.adapter.to_stored(corr)).to(p.dtype))
            else:
                pf = p.float()
                p.copy_((pf - (pf @ t.q) @ t.q.T).to(p.dtype))
                if t.kind == "dora":
                    self._tie_magnitude(*t.layer)

    @staticmethod
    def _tie_magnitude(layer: Any, adapter_name: str) -> None:
        """m ← ‖W + s·BA‖ per output row, so DoRA's merged weight is W + s·BA (PEFT's own norm convention)."""
        base = layer.get_base_layer().weight
        w = base.T if getattr(layer, "fan_in_fan_out", False) else base
        lora = layer.lora_B[adapter_name].weight.float() @ layer.lora_A[adapter_name].weight.float()
        norm = torch.linalg.norm(w.float() + layer.scaling[adapter_name] * lora, dim=1)
        magnitude = layer.lora_magnitude_vector[adapter_name].weight
        magnitude.copy_(norm.to(magnitude.dtype))
