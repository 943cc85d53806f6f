"""editdecay: do knowledge edits survive fine-tuning?

The pipeline flows one way: models -> data -> edit -> finetune -> evaluate -> experiment -> report, with
``commands``/``cli`` and ``api`` on top and ``util``/``errors`` (and ``groups``, the four model groups named
once) below everything. A package may import only the packages before it in that order (and those below
everything), never one after it; each package's own docstring says what it may import and names any exception
still to be removed.
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
