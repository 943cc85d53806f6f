"""Which objects an edit writes, read from the weights (object tracing, after Youssef et al., arXiv 2505.20819).

A locate-then-edit update W ← W + R Kᵀ(…)⁻¹ writes, for each edited subject, a residual r_j that drives the
model towards the new object. The left singular vectors of the edited matrix (of ΔW when the base is known,
of W itself otherwise) span those residuals. Each direction u is read the way the model reads its residual
stream: added to the residual at the edited layer's output, at the last position of a few neutral prompts,
and run through the remaining layers to the next-token logits (``mode="forward"``); or through the final
norm and unembedding alone (``mode="lens"``, the logit lens). The tokens whose logits rise most are the
traced objects. The SVD leaves each u's sign open, so both signs are read and the more peaked one kept.

Relation to the paper. What could be read of it here (its abstracts and third-party summaries; the method
section and github.com/paulyoussef/trace-and-reverse were not reachable) is that its tracer ("EditScope")
rests on the edit living in the top singular component of the edited matrix and uses no prompt related to the
edit; its exact reader (prompt, insertion point, decoding) could not be checked, so this module does not claim
to be it. :func:`added_to_rewrite_output`, :func:`next_token_ranks` and :func:`rewrite_inputs` measure an upper
bound for readers of that kind (``scripts/erase_eval.py trace-bound``): what ΔW writes for the true subject's
own key, inserted where such a reader could insert it. On the 10-edit SmolLM2-135M MEMIT folder that bound is
0 of 10 in the top 5 at every prompt-free place measured, and 4 of 10 only inside the record's own relation
prompt (docs/erase.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from editdecay.errors import ConfigError
from editdecay.models.arch import ArchAdapter

NEUTRAL_PROMPTS = ("The", "It is", "In the year", "They said that", "This is a", "According to")


@dataclass
class TracedDirection:
    layer: int
    index: int  # rank of the singular direction (0 = largest)
    sigma: float
    tokens: list[str]  # top tokens, most promoted first
    token_ids: list[int]
    peak: float  # z-score of the top token's logit rise (how clearly one object stands out)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "index": self.index, "sigma": self.sigma, "tokens": self.tokens,
                "token_ids": self.token_ids, "peak": self.peak}


def _layer_output_hook(add: torch.Tensor):
    """Forward hook adding ``add`` [batch, d] to the last position of a decoder layer's output."""

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, -1, :] += add.to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return hook


class DirectionReader:
    """Reads residual directions at a layer as next-token logit changes (forward) or by the logit lens."""

    def __init__(self, model: nn.Module, tok: Any, adapter: ArchAdapter, mode: str = "forward",
                 prompts: Sequence[str] = NEUTRAL_PROMPTS):
        if mode not in ("forward", "lens"):
            raise ConfigError(f"trace mode {mode!r}: use 'forward' or 'lens'")
        self.model, self.tok, self.adapter, self.mode = model, tok, adapter, mode
        enc = tok(list(prompts), add_special_tokens=True)["input_ids"]
        self.prompts = [torch.tensor([ids]) for ids in enc]  # one at a time: no padding at the last position
        self._base: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _run(self, layer: int, add: torch.Tensor | None) -> torch.Tensor:
        """Next-token logits [n_prompts, vocab] with ``add`` at the layer's output (last position)."""
        device = next(self.model.parameters()).device
        outs = []
        for ids in self.prompts:
            handle = None
            if add is not None:
                handle = self.adapter.layer(self.model, layer).register_forward_hook(_layer_output_hook(add))
            try:
                with torch.no_grad():
                    outs.append(self.model(input_ids=ids.to(device)).logits[0, -1].float())
            finally:
                if handle is not None:
                    handle.remove()
        return torch.stack(outs)

    def _scale(self, layer: int) -> float:
        """The typical norm of the residual at the layer's output (directions are added at this size)."""
        if layer not in self._base:
            captured = []
            handle = self.adapter.layer(self.model, layer).register_forward_hook(
                lambda _m, _a, out: captured.append((out[0] if isinstance(out, tuple) else out)[0, -1].detach()))
            try:
                logits = self._run(layer, None)
            finally:
                handle.remove()
            self._base[layer] = (logits, torch.stack(captured).norm(dim=-1).mean())
        return float(self._base[layer][1])

    def rise(self, layer: int, direction: torch.Tensor) -> torch.Tensor:
        """How much each token's logit rises when the residual moves along ``direction`` [d] (mean over prompts)."""
        direction = direction.float() / direction.float().norm()
        if self.mode == "lens":
            norm = self.model.get_submodule(self.adapter.final_norm)
            unembed = self.model.get_submodule(self.adapter.unembed)
            with torch.no_grad():
                # a norm's gain is elementwise: the lens of a direction is the unembedding of gain ⊙ u
                gain = getattr(norm, "weight", None)
                vec = direction * (gain.float() if gain is not None else 1.0)
                if getattr(self.model.config, "model_type", "") in ("gemma3_text", "gemma3"):
                    vec = direction * (1.0 + gain.float())
                return unembed.weight.float() @ vec
        scale = self._scale(layer)
        logits0 = self._base[layer][0]
        add = direction * scale
        return (self._run(layer, add) - logits0).mean(0)


def _peak(rise: torch.Tensor) -> float:
    std = float(rise.std())
    return float((rise.max() - rise.mean()) / std) if std > 0 else 0.0


def trace_directions(reader: DirectionReader, layer: int, u: torch.Tensor, sigma: torch.Tensor,
                     top: int = 5) -> list[TracedDirection]:
    """Read each column of ``u`` [d, k] (both signs, the more peaked kept): the tokens it promotes."""
    out = []
    for i in range(u.shape[1]):
        best = None
        for sign in (1.0, -1.0):
            rise = reader.rise(layer, sign * u[:, i])
            p = _peak(rise)
            if best is None or p > best[0]:
                best = (p, rise)
        peak, rise = best
        ids = torch.topk(rise, top).indices.tolist()
        out.append(TracedDirection(layer=layer, index=i, sigma=float(sigma[i]), token_ids=ids,
                                   tokens=[reader.tok.decode([t]) for t in ids], peak=peak))
    return out


def first_token(tok: Any, target: str) -> int:
    """The first token of a target as the model continues a prompt with it (" " + target)."""
    from editdecay.data.tokens import continuation

    return int(tok(continuation(target), add_special_tokens=False)["input_ids"][0])


def tracing_accuracy(traced: Sequence[TracedDirection], targets: Sequence[str], tok: Any, top: int = 1) -> dict:
    """Fraction of ``targets`` whose first token is among the top-``top`` tokens of some traced direction."""
    found: set[int] = set()
    for d in traced:
        found.update(d.token_ids[:top])
    want = [first_token(tok, t) for t in targets]
    hits = [t in found for t in want]
    return {"n_targets": len(want), "hits": int(sum(hits)), "accuracy": sum(hits) / len(want) if want else None,
            "n_directions": len(traced), "top": top}


# ----------------------------------------------------------------------------------------------------------
# reading what an update writes, at a chosen place (the upper bound of a tracer: scripts/erase_eval.py)


@contextmanager
def added_to_rewrite_output(model: nn.Module, adapter: ArchAdapter,
                            adds: Mapping[int, tuple[int, torch.Tensor]] | None) -> Iterator[None]:
    """While inside, ``adds[layer] = (pos, vec)`` is added to the output of that layer's rewritten projection
    (what MEMIT/AlphaEdit's ΔW changes: the MLP output, before any post-MLP norm) at position ``pos`` of every
    sequence in the batch."""
    handles = []

    def hook_for(pos: int, vec: torch.Tensor):
        def hook(_module, _args, output):
            output = output.clone()
            output[:, pos] += vec.to(device=output.device, dtype=output.dtype)
            return output

        return hook

    try:
        for layer, (pos, vec) in (adds or {}).items():
            handles.append(adapter.rewrite_module(model, layer).register_forward_hook(hook_for(pos, vec)))
        yield
    finally:
        for h in handles:
            h.remove()


def next_token_ranks(model: nn.Module, adapter: ArchAdapter, input_ids: torch.Tensor, token_ids: Sequence[int],
                     adds: Mapping[int, tuple[int, torch.Tensor]] | None = None) -> list[int]:
    """Rank (0 = the most likely) of each of ``token_ids`` in the next-token logits after ``input_ids`` [1, T],
    with ``adds`` (see :func:`added_to_rewrite_output`) in place."""
    device = next(model.parameters()).device
    with added_to_rewrite_output(model, adapter, adds), torch.no_grad():
        logits = model(input_ids=input_ids.to(device)).logits[0, -1].float()
    return [int((logits > logits[t]).sum()) for t in token_ids]


def rewrite_inputs(model: nn.Module, adapter: ArchAdapter, input_ids: torch.Tensor, pos: int,
                   layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """The input of each layer's rewritten projection (its key, k) at position ``pos``, float64 [d_in]: ΔW k is
    what an update of that matrix writes there."""
    keys: dict[int, torch.Tensor] = {}
    device = next(model.parameters()).device

    def hook_for(layer: int):
        def hook(_module, args, _output):
            keys[layer] = args[0][0, pos].detach().double().cpu()

        return hook

    handles = [adapter.rewrite_module(model, layer).register_forward_hook(hook_for(layer)) for layer in layers]
    try:
        with torch.no_grad():
            model(input_ids=input_ids.to(device))
    finally:
        for h in handles:
            h.remove()
    return keys
