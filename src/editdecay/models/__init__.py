"""Models: the per-architecture adapter table and the registry that turns names into local folders."""

from editdecay.models.arch import ArchAdapter, get_adapter, supported_architectures
from editdecay.models.registry import load_model, model_status, resolve_model

__all__ = ["ArchAdapter", "get_adapter", "supported_architectures", "load_model", "model_status", "resolve_model"]
