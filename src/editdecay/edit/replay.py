"""The two ways a target-value step runs the layers above L, given layer L's output plus δ.

Layers 0..L never see δ, so their output is computed once per chunk and replayed: :class:`FullRunner` runs
layers L+1.. over whole sequences; :class:`CachedRunner` (``z_prefix_cache``, the default) also hands the
positions before the subject's last token to every step as a KV cache, so each step runs layers L+1.. only
from the subject's last token on. Both give the same final hidden states (to float rounding).
"""

from __future__ import annotations

from typing import Any

import torch

from editdecay.edit.hooks import (
    StopForward,
    base_model,
    model_device,
    out_tensor,
    pad_right,
    raise_stop,
    run_model,
    start_at,
)
from editdecay.edit.prompts import ZBatch


class FullRunner:
    """Per step: layers L+1.. over whole sequences, layers 0..L replayed from one cached pass."""

    def __init__(self, model, adapter, b: ZBatch, layer: int, pad_id: int):
        self.model, self.adapter, self.layer = model, adapter, layer
        device = model_device(model)
        self.ids = pad_right(b.ids, pad_id, device)
        self.lens = torch.tensor([len(s) for s in b.ids], device=device)
        captured: list[torch.Tensor] = []
        handle = adapter.layer(model, layer).register_forward_hook(
            lambda _m, _a, out: captured.append(out_tensor(out).detach()))
        try:
            with torch.no_grad():
                run_model(model, self.ids, stop_module=adapter.layer(model, layer))
        finally:
            handle.remove()
        self.h = captured[0]  # [n_seq, T, d]
        self.offset = torch.zeros(len(b.ids), dtype=torch.long, device=device)  # column of position 0

    def forward(self, act_seq: torch.Tensor, lookup_cols: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
        width = int(self.lens[act_seq].max())
        h = self.h[act_seq, :width]
        edited = h.index_put((torch.arange(act_seq.numel(), device=h.device), lookup_cols), add.to(h.dtype),
                              accumulate=True)
        with start_at(self.model, self.adapter, self.layer + 1, lambda: edited):
            return run_model(self.model, self.ids[act_seq, :width])


class CachedRunner:
    """Per step: layers L+1.. over the positions from the subject's last token on only.

    Positions before the subject's last token never see δ, so their keys/values at every layer are
    computed once (left-padded prefix, as in batched generation) and handed to each step as a KV cache;
    positions from the subject's last token on are replayed at layer L (+δ) and run through layers L+1...
    """

    def __init__(self, model, adapter, b: ZBatch, layer: int, pad_id: int):
        from transformers import DynamicCache

        self.model, self.adapter, self.layer = model, adapter, layer
        self._cache_cls = DynamicCache
        device = model_device(model)
        n = len(b.ids)
        pre = b.lookup
        self.P = max(pre)
        suf = [len(s) - p for s, p in zip(b.ids, pre, strict=True)]
        S = max(suf)
        self.prefix_mask = torch.zeros((n, self.P), dtype=torch.long, device=device)
        prefix_ids = torch.full((n, self.P), pad_id, dtype=torch.long)
        suffix_ids = torch.full((n, S), pad_id, dtype=torch.long)
        self.suffix_mask = torch.zeros((n, S), dtype=torch.long, device=device)
        for i, (seq, p) in enumerate(zip(b.ids, pre, strict=True)):
            if p:
                prefix_ids[i, self.P - p:] = torch.tensor(seq[:p])
                self.prefix_mask[i, self.P - p:] = 1
            suffix_ids[i, :len(seq) - p] = torch.tensor(seq[p:])
            self.suffix_mask[i, :len(seq) - p] = 1
        self.suffix_ids = suffix_ids.to(device)
        self.suffix_pos = torch.tensor(pre, device=device)[:, None] + torch.arange(S, device=device)[None, :]
        self.suffix_lens = torch.tensor(suf, device=device)
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        base = base_model(model)
        with torch.no_grad():
            cache = None
            if self.P > 0:
                cache = DynamicCache(config=model.config)
                pos = (self.prefix_mask.cumsum(-1) - 1).clamp_min(0)
                base(input_ids=prefix_ids.to(device), attention_mask=self.prefix_mask, position_ids=pos,
                     cache=cache, use_cache=True)
                self.kv = [(lay.keys, lay.values) for lay in cache.layers]
            captured: list[torch.Tensor] = []
            handle = adapter.layer(model, layer).register_forward_hook(
                lambda _m, _a, out: captured.append(out_tensor(out).detach()))
            stop = adapter.layer(model, layer).register_forward_hook(raise_stop)
            try:
                base(**self._inputs(torch.arange(n, device=device), S, cache))
            except StopForward:
                pass
            finally:
                handle.remove()
                stop.remove()
        self.h = captured[0]  # [n_seq, S, d]: layer L output from the subject's last token on
        self.offset = torch.tensor(pre, device=device)  # absolute column of suffix position 0

    def _inputs(self, act_seq: torch.Tensor, width: int, cache) -> dict[str, Any]:
        mask = self.suffix_mask[act_seq, :width]
        if cache is not None:
            mask = torch.cat([self.prefix_mask[act_seq], mask], dim=1)
        return dict(input_ids=self.suffix_ids[act_seq, :width], attention_mask=mask,
                    position_ids=self.suffix_pos[act_seq, :width], cache=cache, use_cache=cache is not None)

    def _cache_for(self, act_seq: torch.Tensor):
        if self.kv is None:
            return None
        cache = self._cache_cls(config=self.model.config)
        for idx, (k, v) in enumerate(self.kv):
            cache.update(k[act_seq], v[act_seq], idx)
        return cache

    def forward(self, act_seq: torch.Tensor, lookup_cols: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
        width = int(self.suffix_lens[act_seq].max())
        h = self.h[act_seq, :width]
        edited = h.index_put((torch.arange(act_seq.numel(), device=h.device), lookup_cols), add.to(h.dtype),
                              accumulate=True)
        with start_at(self.model, self.adapter, self.layer + 1, lambda: edited):
            out = base_model(self.model)(**self._inputs(act_seq, width, self._cache_for(act_seq)))
        return out.last_hidden_state


__all__ = ["FullRunner", "CachedRunner"]
