"""Knowledge editing: MEMIT and AlphaEdit on one shared core (keys, target values, spreading).

- :mod:`~editdecay.edit.core` keys, target values z, layer-by-layer spreading (method-agnostic)
- :mod:`~editdecay.edit.stats` second moments of each edited layer's keys, one pass, disk cache
- :mod:`~editdecay.edit.memit`, :mod:`~editdecay.edit.alphaedit` the update rules only
- :mod:`~editdecay.edit.hparams` hyperparameter dataclasses and the per-model defaults table
- :mod:`~editdecay.edit.api` ``edit``, ``edit_to_folder``, ``apply_deltas``

May import: :mod:`editdecay.models`, :mod:`editdecay.data`, :mod:`editdecay.util` and
:mod:`editdecay.errors`; never finetune, experiment or report. Known exception, to go in the issue-14
restructure: ``core`` and ``stats`` take the tokenisation rules (``continuation``, ``special_prefix``) from
``evaluate.scoring``.
"""

from editdecay.edit.api import EditResult, apply_deltas, edit, edit_to_folder, load_deltas
from editdecay.edit.hparams import AlphaEditHparams, EditHparams, default_hparams, hparams_from_dict
from editdecay.edit.stats import StatsCache

__all__ = ["EditResult", "edit", "edit_to_folder", "apply_deltas", "load_deltas", "EditHparams",
           "AlphaEditHparams", "default_hparams", "hparams_from_dict", "StatsCache"]
