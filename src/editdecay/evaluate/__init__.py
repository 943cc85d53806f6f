"""Evaluation: edit metrics per record (ROME/MEMIT), decay metrics, downstream accuracy, perplexity.

``scoring`` is the one batched log-prob path; ``edits`` the per-record edit metrics; ``downstream`` and
``perplexity`` the cost of fine-tuning; ``decay`` compares two evaluations (EFR, survival, paired tests);
``api`` holds what other stages and users call.

May import: :mod:`editdecay.models`, :mod:`editdecay.data`, :mod:`editdecay.util` and
:mod:`editdecay.errors`; it scores any model folder, so it needs neither edit nor finetune, and never
imports experiment or report.
"""
