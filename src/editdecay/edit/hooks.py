"""Running a slice of a decoder's layers: start a forward at layer l, stop it after a module, freeze the model.

Every pass of the editor (keys, target values, spreading) and of the second-moment statistics runs only the
layers it needs: :func:`start_at` makes layers ``0..l-1`` replay a cached input of layer l (the embedding,
masks and position embeddings are still made by the model's own forward, so this works for every
architecture in the adapter table), and :func:`run_model` stops the forward once the deepest hooked module
has run. Decoder layers in transformers 5 return a tensor, older ones a tuple: :func:`out_tensor` and
:func:`hidden_arg` read both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from editdecay.errors import ModelError
from editdecay.models.arch import ArchAdapter


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the deepest needed activation is captured."""


def raise_stop(*_: Any) -> None:
    raise StopForward


_LAYER_ATTRS = ("attention_type", "layer_idx", "is_sliding", "sliding_window", "layer_type", "use_sliding_window")


class _Skip(nn.Module):
    """Stands in for a decoder layer whose output is known: the identity, or a replayed tensor."""

    def __init__(self, original: nn.Module, replay: Callable[[], torch.Tensor] | None):
        super().__init__()
        for name in _LAYER_ATTRS:
            if hasattr(original, name) and not isinstance(getattr(original, name), (nn.Module, torch.Tensor)):
                setattr(self, name, getattr(original, name))
        self._replay = replay

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._replay is None:
            return hidden_states
        return self._replay()


@contextmanager
def start_at(model: nn.Module, adapter: ArchAdapter, start: int, replay: Callable[[], torch.Tensor] | None) -> Iterator[None]:
    """Run forwards as if layers ``0..start-1`` produced ``replay()`` (the input of layer ``start``).

    The embedding, masks and position embeddings are still made by the model's own forward (cheap), so
    this works for every architecture in the adapter table; the skipped layers do no work.
    """
    if start <= 0:
        yield
        return
    layers = adapter.layer_modules(model)
    saved = [layers[i] for i in range(start)]
    try:
        for i in range(start):
            layers[i] = _Skip(saved[i], replay if i == start - 1 else None)
        yield
    finally:
        for i in range(start):
            layers[i] = saved[i]


def base_model(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        raise ModelError(f"{type(model).__name__} has no base model (the decoder without the LM head)")
    return base


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    raise ModelError("cannot find the hidden states among a decoder layer's inputs")


def out_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def run_model(model: nn.Module, input_ids: torch.Tensor, *, stop_module: nn.Module | None = None) -> torch.Tensor | None:
    """Forward the decoder (no LM head); stop early after ``stop_module`` if given. Returns the final
    (normed) hidden states, or None when stopped."""
    handle = stop_module.register_forward_hook(raise_stop) if stop_module is not None else None
    try:
        out = base_model(model)(input_ids=input_ids, use_cache=False)
        return out.last_hidden_state
    except StopForward:
        return None
    finally:
        if handle is not None:
            handle.remove()


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """Right-padded id matrix. Causal attention never lets a real token see a pad to its right, so no
    attention mask is needed and positions stay 0..n-1, as in an unpadded forward."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
    return ids.to(device)


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration (restored afterwards)."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        if was_training:
            model.train()


__all__ = ["StopForward", "raise_stop", "start_at", "run_model", "pad_right", "frozen", "base_model", "model_device",
           "hidden_arg", "out_tensor"]
