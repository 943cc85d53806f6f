"""The layer-by-layer update: spread the target values over the edited layers and write each layer's ΔW.

For each edited layer in order, keys and the remaining residual at layer L are recomputed on the partly edited
model; the residual divided by the number of layers left is what this layer must add, and the method's
:class:`UpdateRule` (MEMIT, AlphaEdit: :mod:`editdecay.edit.registry`) turns (keys K, residuals R) into ΔW.
Passes after the first restart from the cached input of the previously edited layer (layers below it are
unchanged). Numerical trouble raises :class:`~editdecay.errors.NumericalError` naming the layer and requests,
and the layers already written in the call are rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from editdecay.data.tokens import pad_token_id
from editdecay.deltas import factor_bytes, lowrank_product
from editdecay.edit.hooks import frozen
from editdecay.edit.keys import subject_pass
from editdecay.edit.linalg import through_output_norm
from editdecay.edit.prompts import Encoder, Request, SubjectPrompts, request_names
from editdecay.edit.targets import Targets
from editdecay.errors import ConfigError, ModelError, NumericalError
from editdecay.models.arch import ArchAdapter


class UpdateRule(Protocol):
    """A method's update for one layer from keys [d_in, n] and residuals [d_out, n]: ΔW [d_out, d_in] (float64)
    as its factors (L [d_out, n], R [n, d_in]), ΔW = L R."""

    def factors(self, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def after_edit(self, keys: dict[int, torch.Tensor]) -> None: ...

    wants_final_keys: bool


def apply_update(
    model: nn.Module,
    tok: Any,
    adapter: ArchAdapter,
    requests: Sequence[Request],
    templates: Sequence[Sequence[str]],
    hparams: Any,
    targets: Targets,
    rule: UpdateRule,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    factors: dict[str, tuple[torch.Tensor, torch.Tensor] | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Spread the targets over ``hparams.layers`` and write the updates into the model, in place.

    Keys, residuals and the solve stay on the model's device in float32/float64 whatever the weights'
    dtype. Returns the weight deltas {parameter name: ΔW in the stored orientation, float32, CPU}. Every layer's
    update is checked before it is written; on a :class:`NumericalError` the layers already written in
    this call are rolled back, so the model is never left half-edited with bad values.

    Where the update's rank-n factors take fewer bytes than ΔW, ΔW is their :func:`~editdecay.deltas.lowrank_product`
    (what the deltas file rebuilds, bit for bit) and, given a ``factors`` dict, they are put in it (stored
    orientation, float64) under the parameter's name; a weight updated densely gets ``None`` there.
    """
    layers = list(hparams.layers)
    z_layer = targets.layer
    if z_layer != layers[-1]:
        raise ConfigError(f"targets were computed at layer {z_layer}, but the last edited layer is {layers[-1]}")
    enc = Encoder(tok)
    prompts = SubjectPrompts.build(enc, requests, templates)
    pad = pad_token_id(tok)
    norm_path = adapter.mlp_output_norm
    written: list[tuple[torch.Tensor, torch.Tensor]] = []
    deltas: dict[str, torch.Tensor] = {}
    entry_first: list[torch.Tensor] | None = None
    entry_prev: list[torch.Tensor] | None = None
    try:
        with frozen(model):
            for i, layer in enumerate(layers):
                start = layers[i - 1] if i > 0 else 0
                res = subject_pass(
                    model, adapter, prompts, key_layers=[layer], z_layer=z_layer,
                    module_out_layer=layer if norm_path else None, start=start,
                    start_entry=entry_prev if i > 0 else None, entry_layer=layer, pad_id=pad,
                )
                if i == 0:
                    entry_first = res.entry
                entry_prev = res.entry
                keys = prompts.average_keys(res.keys[layer])  # [n, d_in]
                cur_z = res.z_out  # [n, d]
                _check_finite(keys, f"keys at layer {layer}", requests)
                _check_finite(cur_z, f"hidden states at layer {z_layer}", requests)
                z = targets.z.to(device=cur_z.device, dtype=torch.float32)  # on the model's device
                resid = (z - cur_z) / (len(layers) - i)  # [n, d]
                if norm_path:
                    norm = adapter.layer(model, layer).get_submodule(norm_path)
                    resid = through_output_norm(norm, res.module_out, resid)
                _check_finite(resid, f"residuals at layer {layer}", requests)
                if log:
                    log(f"layer {layer}: mean residual norm {(z - cur_z).norm(dim=-1).mean():.3f}, "
                        f"writing {len(requests)} key/value pairs")
                what = f"layer {layer} ({len(requests)} requests: {request_names(requests)})"
                try:
                    left, right = rule.factors(layer, keys.T.double(), resid.T.double())  # ΔW = left @ right
                except NumericalError as exc:
                    if what in str(exc):
                        raise
                    raise NumericalError(f"{what}: {exc}") from None
                weight = adapter.rewrite_weight(model, layer)
                name = adapter.rewrite_name(layer) + ".weight"
                # the delta is kept in float32 as solved; a half-precision weight gets W + ΔW summed in
                # float32 and rounded once (rounding ΔW first would lose its small entries)
                if factor_bytes([(left, right)]) < 4 * weight.numel():
                    pair = (right.T, left.T) if adapter.rewrite_transposed else (left, right)
                    pair = tuple(t.detach().to(device="cpu", dtype=torch.float64).contiguous() for t in pair)
                    stored = lowrank_product(*pair)
                else:
                    pair = None
                    stored = adapter.to_stored(left @ right).to(torch.float32).contiguous()
                if factors is not None:
                    factors[name] = pair
                if not torch.isfinite(stored).all():
                    raise NumericalError(f"{what}: the update holds NaN/inf")
                if stored.shape != weight.shape:
                    raise ModelError(f"{what}: update shape {tuple(stored.shape)} != weight {tuple(weight.shape)}")
                with torch.no_grad():
                    before = weight.detach().clone()
                    weight.copy_((weight.float() + stored.to(weight.device)).to(weight.dtype))
                    written.append((weight, before))
                deltas[name] = deltas.get(name, 0) + stored.cpu()
            if rule.wants_final_keys:
                res = subject_pass(model, adapter, prompts, key_layers=layers, start=layers[0],
                                   start_entry=entry_first, pad_id=pad)
                final = {layer: prompts.average_keys(res.keys[layer]) for layer in layers}
                for layer, k in final.items():
                    _check_finite(k, f"keys at layer {layer} after the edit", requests)
                rule.after_edit({layer: k.T.double() for layer, k in final.items()})
    except BaseException:
        with torch.no_grad():
            for weight, before in reversed(written):
                weight.copy_(before)
        raise
    return deltas


def _check_finite(x: torch.Tensor | None, what: str, requests: Sequence[Request]) -> None:
    if x is None:
        raise ModelError(f"{what}: nothing was captured (check the adapter's module paths)")
    ok = torch.isfinite(x).all(dim=-1)
    if not ok.all():
        bad = torch.nonzero(~ok).flatten().tolist()
        raise NumericalError(f"{what}: NaN/inf for requests {request_names(requests, bad)}")


__all__ = ["UpdateRule", "apply_update"]
