"""Analyses of artifacts whose results go into the results store, so that the report reads only the store.

``weights`` (per-layer weight change of an edit, from its deltas, and of a fine-tune, against the model it
started from), ``frequency`` (whole-word occurrences of each target in a fine-tuning corpus), ``shift``
(hidden-state shift caused by editing vs by fine-tuning, at the token the editor wrote its keys). Each
function takes artifact folders (or loaded models) and returns plain data (dicts, lists, numbers);
``editdecay analyze`` (commands/analyze.py) runs them for a store's stages and writes the rows with the
store's helpers (experiment/store.py), and the report draws those tables.

May import: :mod:`editdecay.util`, :mod:`editdecay.errors`, :mod:`editdecay.artifacts`, data, models,
``edit.prompts`` (the editor's subject locator), evaluate and finetune; never experiment (the caller passes
the results in and out of the store), report, commands or api.
"""
