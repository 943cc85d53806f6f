"""Edit-preserving fine-tuning: keep the facts an edit wrote while the model is fine-tuned.

Four strategies, each a small piece the fine-tuning stage wires in (``FinetuneConfig.preserve_strategy``):

- ``freeze`` (:mod:`.spec`): the rewritten projections (the edit manifest's ``deltas`` keys) take no update;
- ``nullspace`` (:mod:`.nullspace`): every update to a rewritten projection is projected after each optimizer
  step so that ΔW_ft · K_edit = 0 (AlphaEdit's constraint turned around); for LoRA/DoRA the adapter's A factor
  is projected (and DoRA's magnitude tied to the direction's norm), so the merged update satisfies it;
- ``replay`` (:mod:`.replay`): the edit facts, with paraphrases, mixed into the training data at a rate;
- ``reedit`` (:mod:`.reedit`): after fine-tuning, the edit is solved again on the fine-tuned weights from its
  target values z (re-optimised only for edits whose efficacy fell), with its cost measured.

Where it sits: between ``edit``/``evaluate`` and ``finetune``. It may import ``models``, ``data``, ``edit``,
``evaluate``, :mod:`editdecay.artifacts` (the edit manifest), :mod:`editdecay.stats` (the success threshold) and
``util``; ``finetune`` imports it, and it never imports ``finetune`` (a strategy gets the
model, tokenizer and edit folder it works on as arguments), so no two modules import each other.
This module itself imports nothing heavy: the fine-tuning config and the grid schema (its ``preserve`` axis) read
:data:`STRATEGIES` from it.
"""

STRATEGIES = ("none", "freeze", "nullspace", "replay", "reedit")
NULLSPACE_KEYS = ("mean", "prompts")  # the edit's template-averaged keys, or every (request x template) key
REEDIT_Z = ("base", "edited")  # z as the edit optimised it on the base model, or as the edited model reaches it

__all__ = ["STRATEGIES", "NULLSPACE_KEYS", "REEDIT_Z"]
