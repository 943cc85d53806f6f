"""editdecay: do knowledge edits survive fine-tuning?

Data flows models -> data -> edit -> finetune -> evaluate -> experiment -> report. Imports flow one way,
from the bottom up: ``errors``; ``util``, ``groups`` (the four model groups), ``stats``; ``deltas`` (the deltas file:
dense or factored ΔW); ``artifacts``;
``models``; ``data``; ``edit``; ``evaluate`` (it scores any model folder, so it sits below what calls it:
fine-tuning's tracker and preserve's re-edit); ``preserve``; ``finetune``; ``erase``, ``analyze``;
``experiment``; ``report`` (the store, ``stats``, ``groups`` and ``util`` only); ``api``; ``commands``;
``cli``. A package imports only packages before it, never one after it, and no two modules import each other
(tests/test_habits.py checks both); each package's own docstring says what it may import.
Import the user-facing functions from :mod:`editdecay.api`.
"""

from __future__ import annotations

import re
from importlib import metadata

__version__ = "0.1.0"

# transformers 5 is required: the editor hands its prefix KV cache to the model as ``cache=`` and reads
# ``cache.layers[i].keys``; transformers 4.x would silently ignore ``cache=`` (and recompute the prefix).
# Keep in step with pyproject.toml's pin (tests/test_versions.py checks the two agree).
TRANSFORMERS_MIN = (5, 25)
TRANSFORMERS_BELOW = (6,)


def _check_transformers(version: str) -> None:
    """Raise ImportError with the fix when ``version`` is outside ``[TRANSFORMERS_MIN, TRANSFORMERS_BELOW)``."""
    m = re.match(r"(\d+)\.(\d+)", version)
    found = (int(m.group(1)), int(m.group(2))) if m else None
    if found is None or not TRANSFORMERS_MIN <= found < TRANSFORMERS_BELOW:
        lo, hi = ".".join(map(str, TRANSFORMERS_MIN)), ".".join(map(str, TRANSFORMERS_BELOW))
        raise ImportError(
            f"editdecay needs transformers >={lo},<{hi}, but transformers {version} is installed (on 4.x the "
            f"editor's prefix KV cache, passed as `cache=`, would be silently ignored); "
            f"run: pip install 'transformers>={lo},<{hi}'"
        )


try:
    _check_transformers(metadata.version("transformers"))
except metadata.PackageNotFoundError:  # not installed: importing it fails later with the usual message
    pass
