"""Fine-tuning stage: full, LoRA and DoRA on chosen layers/modules, with edit decay tracked during training.

``config`` (``FinetuneConfig``, validated), ``select`` (which parameters train), ``data`` (tokenise,
collate), ``train`` (the loop, checkpoints, tracking), ``api`` (``finetune`` -> a merged model folder).

May import: :mod:`editdecay.models`, :mod:`editdecay.data`, :mod:`editdecay.edit`,
:mod:`editdecay.artifacts` (edit folders and manifests, its own folder's manifest), :mod:`editdecay.evaluate`
(tracking edits during training scores them; evaluate sits below finetune in the import order),
:mod:`editdecay.preserve` (the edit-preserving strategies), :mod:`editdecay.util` and :mod:`editdecay.errors`;
never erase, analyze, experiment or report.
"""
