"""Removing edits: exact restore from the base, top singular components, and removal of suspected records.

- :func:`restore_exact` copies the base's tensors over every changed parameter: bit-identical to the base.
- :func:`remove_top_components`: W ← W − Σ_{i<k} σ_i u_i v_iᵀ for a located matrix (the training-free
  reversal of Youssef et al., arXiv 2505.20819: the edit lives in the top singular components).
- :func:`reedit_true`: the direct removal of suspected records: edit them again with MEMIT/AlphaEdit
  (editdecay's own ``edit``) with target_new := target_true, on the suspected layers.
- :func:`project_out_keys`: the other direct removal: W ← W (I − P_K) restricted to the edit keys' span,
  i.e. the located matrix stops answering the suspected subjects' keys in the directions the edit added.
- :func:`finetune_layers`: the study's recipe: full fine-tuning of the located layers' MLP on generic data.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editdecay.data.records import EditRecord
from editdecay.erase.locate import MatrixChange
from editdecay.errors import ConfigError, DataError, ModelError
from editdecay.models.arch import ArchAdapter

REEDIT_STATS_TOKENS = 20_000  # generic-text tokens for the edited model's second moments in a re-edit


def restore_exact(model: nn.Module, base: nn.Module, changes: Sequence[MatrixChange]) -> list[str]:
    """Copy the base's values into every changed parameter of ``model`` (in place); return their names."""
    ours = dict(model.named_parameters())
    theirs = dict(base.named_parameters())
    with torch.no_grad():
        for c in changes:
            ours[c.name].copy_(theirs[c.name].to(ours[c.name].dtype))
    return [c.name for c in changes]


def top_components(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U[:, :k], S[:k], Vh[:k]) of an [out, in] matrix, in float64."""
    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    return u[:, :k], s[:k], vh[:k]


def remove_top_components(model: nn.Module, adapter: ArchAdapter, ks: dict[int, int]) -> dict[int, list[float]]:
    """W_ℓ ← W_ℓ − U_k S_k V_kᵀ in the rewritten projection of each layer ℓ in ``ks`` (in place).

    Returns the removed singular values per layer. ``k == 0`` leaves a layer as it is.
    """
    removed: dict[int, list[float]] = {}
    with torch.no_grad():
        for layer, k in sorted(ks.items()):
            if k < 0:
                raise ConfigError(f"layer {layer}: cannot remove {k} components")
            if k == 0:
                removed[layer] = []
                continue
            weight = adapter.rewrite_weight(model, layer)
            w = adapter.as_out_in(weight.detach()).double()
            u, s, vh = top_components(w, k)
            low = (u * s) @ vh
            weight.sub_(adapter.to_stored(low).to(weight.dtype))
            removed[layer] = [float(x) for x in s]
    return removed


def records_with_truth(records: Sequence[EditRecord], source: str) -> list[EditRecord]:
    """The records turned around (target_new := target_true); every record must know its true target."""
    out = []
    for i, r in enumerate(records):
        if not r.target_true:
            raise DataError(source, "a record needs target_true to be edited back to it", i, "target_true")
        out.append(EditRecord(**{**r.to_dict(), "target_new": r.target_true, "target_true": r.target_new}))
    return out


def reedit_true(model: nn.Module, tok: Any, records: Sequence[EditRecord], layers: Sequence[int], source: str,
                method: str = "memit", progress: bool = False, max_steps: int | None = None,
                stats_tokens: int | None = REEDIT_STATS_TOKENS) -> dict[str, Any]:
    """Edit ``records`` back to their true targets on ``layers`` (in place) with editdecay's own editor.

    ``max_steps`` caps the target-value optimisation steps (the budget of this removal). ``stats_tokens``:
    tokens of generic text for the second moments of the *edited* model (their cache is keyed by the
    weights, so a received model always misses it; None: the editor's default of 100k, ~5 min on a CPU).
    """
    from editdecay.edit.api import edit
    from editdecay.edit.hparams import resolve_hparams

    back = records_with_truth(records, source)
    overrides: dict[str, Any] = {"layers": list(layers)}
    if stats_tokens is not None:
        overrides["mom2_n_tokens"] = int(stats_tokens)
    if max_steps is not None:
        overrides["v_num_grad_steps"] = min(max_steps, resolve_hparams(method, model, None, None).v_num_grad_steps)
    result = edit(model, tok, back, method=method, overrides=overrides, progress=progress)
    return {"method": method, "layers": list(layers), "timings": result.timings,
            "delta_norms": {k: float(v.norm()) for k, v in result.deltas.items()}}


def project_out_keys(model: nn.Module, tok: Any, adapter: ArchAdapter, records: Sequence[EditRecord],
                     layers: Sequence[int], keep: float = 0.0) -> dict[int, float]:
    """W_ℓ ← W_ℓ − (1 − keep) · W_ℓ K (KᵀK)⁻¹ Kᵀ for the suspected subjects' keys K at each layer (in place).

    The keys are the inputs of the rewritten projection at each subject's last token (editdecay's
    ``compute_keys``, the same context templates as an edit). What the matrix writes for those keys (the
    edit's value) is removed; directions orthogonal to the keys are untouched. Returns ‖removed‖ per layer.
    """
    from editdecay.edit.keys import compute_keys
    from editdecay.edit.prompts import Request, context_templates

    requests = [Request.from_record(r) for r in records]
    templates = context_templates(model, tok)
    out: dict[int, float] = {}
    for layer in layers:
        keys = compute_keys(model, tok, adapter, layer, requests, templates)  # [n, d_in]
        k = keys.detach().double().T  # [d_in, n]
        q, _ = torch.linalg.qr(k)
        with torch.no_grad():
            weight = adapter.rewrite_weight(model, layer)
            w = adapter.as_out_in(weight.detach()).double()
            part = (w @ q) @ q.T * (1.0 - keep)
            weight.sub_(adapter.to_stored(part).to(weight.dtype))
        out[layer] = float(part.norm())
    return out


def finetune_layers(model: nn.Module, tok: Any, layers: Sequence[int], steps: int, work_dir: Path,
                    data: str = "commonsense", seed: int = 0, progress: bool = False) -> tuple[nn.Module, dict]:
    """Full fine-tuning of the MLP of ``layers`` on generic data for ``steps`` steps (the study's recipe).

    Runs editdecay's ``finetune`` on a copy and returns (fine-tuned model, its manifest).
    """
    from editdecay.finetune.api import finetune
    from editdecay.models.registry import load_model

    if steps < 1:
        raise ConfigError(f"--budget-steps {steps}: fine-tuning needs at least one step")
    if not layers:
        raise ModelError("no layers to fine-tune: give --layers or a way to locate the edits")
    cfg = {"type": "full", "layers": sorted(layers), "modules": "mlp", "data": data, "max_steps": steps,
           "seed": seed}
    out = Path(work_dir) / "finetuned"
    manifest = finetune(copy.deepcopy(model), cfg, out, tokenizer=tok, overwrite=True, progress=progress)
    tuned, _ = load_model(out)
    return tuned, manifest
