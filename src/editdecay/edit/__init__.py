"""Knowledge editing: MEMIT and AlphaEdit as update rules on one pipeline of small modules.

The pipeline, in the order an edit runs it (each module imports only the ones before it):

- :mod:`~editdecay.edit.hooks` start/stop a forward at a layer, run the decoder, freeze the model
- :mod:`~editdecay.edit.prompts` requests, the editor's tokenisation, context templates, the prompt batches
- :mod:`~editdecay.edit.keys` keys at the subject's last token (one pass for several layers)
- :mod:`~editdecay.edit.replay`, :mod:`~editdecay.edit.targets` target values z (batched Adam on δ at layer L);
  :mod:`~editdecay.edit.targets_cache` keeps each request's z on disk
- :mod:`~editdecay.edit.stats_text` the statistics text, streamed into token windows ->
  :mod:`~editdecay.edit.stats_cache` the model hashes, keys and disk cache ->
  :mod:`~editdecay.edit.stats` second moments of each edited layer's keys
- :mod:`~editdecay.edit.linalg` checked solves, output-norm inversion
- :mod:`~editdecay.edit.spread` the layer-by-layer update through a method's :class:`UpdateRule`
- :mod:`~editdecay.edit.memit`, :mod:`~editdecay.edit.alphaedit` the update rules (and AlphaEdit's state)
- :mod:`~editdecay.edit.hparams_classes`, :mod:`~editdecay.edit.registry`, :mod:`~editdecay.edit.hparams`
  hyperparameter dataclasses -> the method registry (name -> hparams class, rule, state) -> defaults + loader
- :mod:`~editdecay.edit.api` ``edit``, ``edit_to_folder``, ``apply_deltas``

May import: :mod:`editdecay.models`, :mod:`editdecay.data` (records, and ``data.tokens``: the tokenisation rules
shared with evaluation), :mod:`editdecay.artifacts` (the edit folder's files and manifest), :mod:`editdecay.util`
and :mod:`editdecay.errors`; never evaluate, finetune,
experiment or report. The names below are loaded on first use, so ``editdecay.edit.registry`` and
``editdecay.edit.hparams`` can be read without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EditResult": "api", "edit": "api", "edit_to_folder": "api", "apply_deltas": "api", "load_deltas": "api",
    "EditHparams": "hparams", "AlphaEditHparams": "hparams", "default_hparams": "hparams",
    "hparams_from_dict": "hparams", "StatsCache": "stats", "get_method": "registry", "method_names": "registry",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"editdecay.edit.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'editdecay.edit' has no attribute {name!r}")


__all__ = list(_EXPORTS)
