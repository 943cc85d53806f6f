"""The editor's linear algebra: solves that refuse bad systems, and the inversion of an output norm.

:func:`solve_checked` is the one solve every update rule uses (an LU solve, never an explicit inverse; a
singular, ill-conditioned or non-finite system raises :class:`~editdecay.errors.NumericalError` before
anything is written into the weights). :func:`through_output_norm` turns the residual a layer must add into a
change of the rewritten projection's output for architectures with a norm after the MLP (Gemma).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from editdecay.errors import NumericalError


def solve_checked(a: torch.Tensor, b: torch.Tensor, *, what: str, max_condition: float | None = None,
                  symmetric: bool = False) -> torch.Tensor:
    """``a⁻¹ b`` by an LU solve (never an explicit inverse), refusing singular, ill-conditioned or
    non-finite systems with :class:`NumericalError` (``what`` names the layer and requests)."""
    if not torch.isfinite(a).all() or not torch.isfinite(b).all():
        raise NumericalError(f"{what}: the system holds NaN/inf")
    if max_condition is not None and symmetric:
        eig = torch.linalg.eigvalsh(a)
        lo, hi = eig[0].item(), eig[-1].item()
        cond = math.inf if lo <= 0 else hi / lo
        if cond > max_condition:
            raise NumericalError(f"{what}: ill-conditioned solve (condition number {cond:.3g} > {max_condition:.3g}); "
                                 "increase mom2_update_weight or mom2_n_tokens, or edit fewer facts per batch")
    x, info = torch.linalg.solve_ex(a, b)
    if int(info) != 0 or not torch.isfinite(x).all():
        raise NumericalError(f"{what}: singular system (LU info {int(info)})")
    resid = torch.linalg.matrix_norm(a @ x - b) / torch.linalg.matrix_norm(b).clamp_min(1e-300)
    if resid.item() > 1e-6:
        raise NumericalError(f"{what}: ill-conditioned solve (relative residual {resid.item():.3g})")
    return x


def through_output_norm(norm: nn.Module, out: torch.Tensor, resid: torch.Tensor, iters: int = 20,
                        chunk: int = 64) -> torch.Tensor:
    """Δo with ``norm(out + Δo) - norm(out) ≈ resid`` (Gauss–Newton, minimum-norm steps).

    For architectures whose MLP output passes through a norm before the residual add (Gemma's
    post_feedforward_layernorm), the residual a layer must add is turned into a change of the rewritten
    projection's output. The norm is scale-invariant, so the damped normal equations pick the smallest Δo.
    """
    from torch.func import jacrev, vmap

    def f(x: torch.Tensor) -> torch.Tensor:
        return norm(x.float()).double()

    results = []
    with torch.no_grad():
        for lo in range(0, out.shape[0], chunk):
            o = out[lo:lo + chunk].double()
            r = resid[lo:lo + chunk].double()
            goal = f(o) + r
            step = torch.zeros_like(o)
            err = r.norm(dim=-1)
            eye = torch.eye(o.shape[-1], dtype=o.dtype, device=o.device)
            for _ in range(iters):
                if (err <= 1e-6 * r.norm(dim=-1)).all():
                    break
                x = o + step
                jac = vmap(jacrev(f))(x)  # [b, d, d]
                res = goal - f(x)
                jtj = jac.transpose(1, 2) @ jac
                damp = 1e-8 * jtj.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)
                rhs = (jac.transpose(1, 2) @ res[..., None])[..., 0]
                direction = torch.linalg.solve(jtj + damp[:, None, None] * eye, rhs[..., None])[..., 0]
                # backtracking: a row takes the largest of 1, 1/2, 1/4 ... that lowers its error, else stays
                scale = torch.ones_like(err)
                accepted = torch.zeros_like(err, dtype=torch.bool)
                for _ in range(12):
                    trial = step + scale[:, None] * direction
                    trial_err = (goal - f(o + trial)).norm(dim=-1)
                    better = (trial_err < err) & ~accepted
                    step = torch.where(better[:, None], trial, step)
                    err = torch.where(better, trial_err, err)
                    accepted |= better
                    if accepted.all():
                        break
                    scale = torch.where(accepted, scale, scale / 2)
            results.append(step.float())
    return torch.cat(results)


__all__ = ["solve_checked", "through_output_norm"]
