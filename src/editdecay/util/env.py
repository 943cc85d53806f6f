"""Run environment facts recorded in every manifest: library versions, machine, seeding."""

from __future__ import annotations

import platform
import random
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


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)

