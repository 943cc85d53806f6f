"""Shared test helpers (not tests): the test modules import these instead of each other.

``bigram`` (a bigram LM with designed probabilities and its closed forms), ``edits`` (tiny edit requests and
fast settings), ``store`` (a results store with the design schema built by plain SQL, artifact folders for it),
``reference`` (test-only references: statistics windows and corpus hash, the per-token loss sum, the subject's
last token).
Fixtures live in ``tests/conftest.py``; ``pyproject.toml`` puts ``tests/`` on the path (``pythonpath``).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root (configs/, benchmarks/, pyproject.toml)
