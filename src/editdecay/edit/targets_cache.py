"""Target values z on disk, one file per request, shared by every update rule, edit count and re-run.

Why per request: z of one request depends on the model's weights, the request, the context templates, the
target-value settings and the layer — not on the update rule (MEMIT and AlphaEdit optimise the same z) nor on
which other requests share its batch (each request has its own δ and its own loss terms). So a key that hashes
exactly those inputs lets a 1,000-edit set reuse the z of the 100 requests it shares with a 100-edit set, both
methods share one optimisation, and an interrupted edit resumes where it stopped.

Each entry is ``<root>/z-<key>.safetensors`` (z, h_init; loss, prob and steps in its metadata), written
atomically, so a half-written entry never looks complete; an unreadable one is recomputed and said so.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# the target-value settings z depends on (the update rule's settings, e.g. λ or the null-space threshold, do not)
Z_FIELDS = ("v_lr", "v_num_grad_steps", "v_loss_layer", "v_weight_decay", "clamp_norm_factor", "kl_factor",
            "v_early_stop_loss", "fact_token")


@dataclass(frozen=True)
class TargetRow:
    """One request's optimised target value."""

    z: torch.Tensor  # [d]
    h_init: torch.Tensor  # [d]
    loss: float
    prob: float
    steps: int


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous()
    return memoryview(t.view(torch.uint8).numpy().reshape(-1))


def model_key(model: nn.Module, templates: Sequence[Sequence[str]], hparams: Any, layer: int) -> str:
    """Hash of the model (config + every parameter), the templates, the target-value settings and the layer."""
    h = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    h.update(json.dumps(config, sort_keys=True, default=str).encode("utf-8"))
    for name, param in model.named_parameters():
        h.update(f"{name}:{param.dtype}:{tuple(param.shape)}".encode())
        h.update(_tensor_bytes(param))
    h.update(json.dumps([[list(g) for g in templates], {f: getattr(hparams, f, None) for f in Z_FIELDS}, layer],
                        default=str).encode("utf-8"))
    return h.hexdigest()


def request_key(base_key: str, request: Any) -> str:
    """The cache key of one request (its case id, subject, prompt and target) under ``base_key``."""
    h = hashlib.sha256(base_key.encode())
    h.update(json.dumps([request.case_id, request.subject, request.prompt, request.target]).encode("utf-8"))
    return h.hexdigest()[:32]


@dataclass
class TargetCache:
    """Per-request target values under ``root``. Pass it explicitly (no module-level state)."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @classmethod
    def default(cls) -> TargetCache:
        """``$EDITDECAY_HOME/targets``: shared by every edit on this machine."""
        from editdecay.models.registry import editdecay_home

        return cls(editdecay_home() / "targets")

    def path(self, key: str) -> Path:
        return self.root / f"z-{key}.safetensors"

    def load(self, key: str, layer: int) -> TargetRow | None:
        """The stored row, or None; a damaged entry is reported and treated as missing."""
        path = self.path(key)
        if not path.exists():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                z, h_init = fh.get_tensor("z"), fh.get_tensor("h_init")
            if z.ndim != 1 or z.shape != h_init.shape:
                raise ValueError(f"z has shape {tuple(z.shape)}, h_init {tuple(h_init.shape)}")
            return TargetRow(z, h_init, float(json.loads(meta["loss"])), float(json.loads(meta["prob"])),
                             int(json.loads(meta["steps"])))
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is recomputed, and said so
            print(f"[editdecay edit] target value {path} unusable ({exc}); optimising it again at layer {layer}",
                  file=sys.stderr)
            return None

    def save(self, key: str, row: TargetRow) -> None:
        from safetensors.torch import save

        from editdecay.util.io import atomic_write_bytes

        meta = {"loss": json.dumps(row.loss), "prob": json.dumps(row.prob), "steps": json.dumps(row.steps)}
        tensors = {"z": row.z.detach().float().cpu().contiguous(), "h_init": row.h_init.detach().float().cpu().contiguous()}
        atomic_write_bytes(self.path(key), save(tensors, metadata=meta))

    def __len__(self) -> int:
        return len(list(self.root.glob("z-*.safetensors"))) if self.root.exists() else 0


def as_cache(cache: TargetCache | str | os.PathLike | bool | None) -> TargetCache | None:
    """None/True -> the default cache, False -> no cache, a path -> a cache there."""
    if cache is None or cache is True:
        return TargetCache.default()
    if cache is False:
        return None
    if isinstance(cache, TargetCache):
        return cache
    return TargetCache(Path(cache))
