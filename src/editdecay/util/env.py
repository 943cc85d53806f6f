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
    import os

    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()}


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)

