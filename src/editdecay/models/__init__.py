"""Models: the per-architecture adapter table and the registry that turns names into local folders.

``arch`` (where each architecture keeps its layers, rewritten projection, norm and unembedding),
``registry`` (names -> folders, GGUF conversion, ``load_model``), ``tiny`` (small random models for tests and
``tiny:<arch>`` grids).

May import: :mod:`editdecay.artifacts` (``load_model`` materialises small edit and fine-tune folders),
:mod:`editdecay.util` and :mod:`editdecay.errors`; it is the first stage, so no other stage (the tiny
tokenizer's training text is passed in by its callers).
"""

from editdecay.models.arch import ArchAdapter, get_adapter, supported_architectures
from editdecay.models.registry import load_model, model_status, resolve_model

__all__ = ["ArchAdapter", "get_adapter", "supported_architectures", "load_model", "model_status", "resolve_model"]
