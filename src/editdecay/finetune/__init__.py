"""Fine-tuning stage: full, LoRA and DoRA on chosen layers/modules, with edit decay tracked during training.

``config`` (``FinetuneConfig``, validated), ``select`` (which parameters train), ``data`` (tokenise,
collate), ``train`` (the loop, checkpoints, tracking), ``api`` (``finetune`` -> a merged model folder).

May import: :mod:`editdecay.models`, :mod:`editdecay.data`, :mod:`editdecay.edit` (edit folders and
manifests), :mod:`editdecay.util` and :mod:`editdecay.errors`; never experiment or report. Tracking edits
during training calls ``evaluate.api`` (imported inside the tracker, the one use of a stage after it).
"""
