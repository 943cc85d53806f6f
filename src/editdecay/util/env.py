"""Run environment facts recorded in every manifest: library versions, machine, seeding."""

from __future__ import annotations

import platform
import random
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("editdecay", "torch", "transformers", "peft", "safetensors", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine_info() -> dict[str, Any]:
    """What a benchmark's figures were measured on: the CPU model (from /proc/cpuinfo, where
    ``platform.processor()`` is often empty on Linux), its cores (all, and those this process may use) and RAM."""
    import os
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text(errors="replace").splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        memory_gb: float | None = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):  # not every platform names these
        memory_gb = None
    return {"platform": platform.platform(), "cpu_model": model or platform.processor(), "cpus": os.cpu_count(),
            "usable_cpus": usable, "memory_gb": memory_gb}


@contextmanager
def peft_without_deprecation_noise() -> Iterator[None]:
    """While active, the FutureWarning PEFT raises on every adapter it wraps or loads (it reads transformers'
    deprecated ``is_gradient_checkpointing``) is not printed: a user can do nothing about it, and a grid printed
    it once per fine-tune and per evaluation of an adapter. Every other warning passes."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
        yield


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)

