"""Keys: the rewritten projection's input at the subject's last token, and the one pass that reads them.

:func:`subject_pass` runs every (request × context template) prompt once, from layer ``start`` (replaying a
cached input) to the deepest layer needed, and captures in that one forward the keys of several layers, layer
L's output at the bare prompts (where the target values live) and the rewrite module's output (for
architectures with a norm after the MLP). :func:`compute_keys` averages the keys within each template
group, then across groups (as the reference's ``compute_ks``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from editdecay.data.tokens import pad_token_id
from editdecay.edit.hooks import frozen, hidden_arg, model_device, out_tensor, pad_right, run_model, start_at
from editdecay.edit.prompts import Encoder, Request, SubjectPrompts
from editdecay.models.arch import ArchAdapter


@dataclass
class PassResult:
    keys: dict[int, torch.Tensor]  # layer -> [n_rows, d_in]
    z_out: torch.Tensor | None  # [n_bare, d] output of layer z_layer at the bare prompts
    module_out: torch.Tensor | None  # [n_bare, d] rewrite-module output at module_out_layer, bare prompts
    entry: list[torch.Tensor] | None  # per chunk: input hidden states of entry_layer [b, T, d]


def subject_pass(
    model: nn.Module,
    adapter: ArchAdapter,
    prompts: SubjectPrompts,
    *,
    key_layers: Sequence[int],
    z_layer: int | None = None,
    module_out_layer: int | None = None,
    start: int = 0,
    start_entry: list[torch.Tensor] | None = None,
    entry_layer: int | None = None,
    pad_id: int = 0,
    chunk: int = 64,
) -> PassResult:
    """One forward over all prompts (in chunks) from layer ``start`` (replaying ``start_entry``, the cached
    input of layer ``start``) to the deepest layer needed, capturing keys at the subject's last token,
    layer ``z_layer``'s output and the rewrite module's output at bare prompts, and the input of
    ``entry_layer`` (kept whole, to restart a later pass there)."""
    device = model_device(model)
    n = len(prompts.ids)
    deepest = max([*key_layers, z_layer if z_layer is not None else -1,
                   module_out_layer if module_out_layer is not None else -1])
    keys: dict[int, list[torch.Tensor]] = {layer: [] for layer in key_layers}
    z_parts: list[torch.Tensor] = []
    mod_parts: list[torch.Tensor] = []
    entries: list[torch.Tensor] = []
    n_t = prompts.n_templates
    chunk = max(n_t, (chunk // n_t) * n_t)  # whole requests per chunk
    cur: dict[str, torch.Tensor] = {}  # the chunk being run: row/column indices the hooks read

    def key_hook(layer: int):
        def hook(_m, args, kwargs):
            keys[layer].append(hidden_arg(args, kwargs)[cur["rows"], cur["cols"]].detach().float())
        return hook

    def z_hook(_m, _args, output):
        z_parts.append(out_tensor(output)[cur["bare"], cur["bare_cols"]].detach().float())

    def mod_hook(_m, _args, output):
        mod_parts.append(out_tensor(output)[cur["bare"], cur["bare_cols"]].detach().float())

    def entry_hook(_m, args, kwargs):
        entries.append(hidden_arg(args, kwargs).detach())

    handles = []
    try:
        for layer in key_layers:
            handles.append(adapter.rewrite_module(model, layer).register_forward_pre_hook(key_hook(layer),
                                                                                          with_kwargs=True))
        if z_layer is not None:
            handles.append(adapter.layer(model, z_layer).register_forward_hook(z_hook))
        if module_out_layer is not None:
            handles.append(adapter.rewrite_module(model, module_out_layer).register_forward_hook(mod_hook))
        if entry_layer is not None:
            handles.append(adapter.layer(model, entry_layer).register_forward_pre_hook(entry_hook, with_kwargs=True))
        for c, lo in enumerate(range(0, n, chunk)):
            hi = min(n, lo + chunk)
            ids = pad_right(prompts.ids[lo:hi], pad_id, device)
            cur["rows"] = torch.arange(hi - lo, device=device)
            cur["cols"] = torch.tensor(prompts.lookup[lo:hi], device=device)
            cur["bare"] = torch.tensor([i - lo for i in range(lo, hi) if i % n_t == 0], device=device)
            cur["bare_cols"] = cur["cols"][cur["bare"]]
            replay = None
            if start > 0:
                if start_entry is None:
                    raise ValueError("start > 0 needs the cached input of the start layer")
                cached = start_entry[c]
                replay = lambda cached=cached: cached  # noqa: E731
            with start_at(model, adapter, start, replay), torch.no_grad():
                run_model(model, ids, stop_module=adapter.layer(model, deepest))
    finally:
        for h in handles:
            h.remove()
    return PassResult(
        keys={layer: torch.cat(v) for layer, v in keys.items()},
        z_out=torch.cat(z_parts) if z_parts else None,
        module_out=torch.cat(mod_parts) if mod_parts else None,
        entry=entries if entry_layer is not None else None,
    )


def compute_keys(model: nn.Module, tok: Any, adapter: ArchAdapter, layer: int, requests: Sequence[Request],
                 templates: Sequence[Sequence[str]]) -> torch.Tensor:
    """Keys [n_requests, d_in]: the rewrite module's input at the subject's last token, template-averaged."""
    prompts = SubjectPrompts.build(Encoder(tok), requests, templates)
    with frozen(model):
        res = subject_pass(model, adapter, prompts, key_layers=[layer], pad_id=pad_token_id(tok))
    return prompts.average_keys(res.keys[layer])


__all__ = ["PassResult", "subject_pass", "compute_keys"]
