"""Finding and removing knowledge edits in a model one did not edit oneself (issue 13, "erase").

Three situations, one module each:

- ``locate``: which matrices were edited. With the base weights, from ΔW = W_model − W_base (layer,
  projection, rank, norm); without them, from a weights-only statistic of each layer's rewritten projection
  compared with its neighbours.
- ``trace``: which objects an edit writes, read from the top singular directions of the edited matrices
  pushed through the final norm and the unembedding (after Youssef et al., arXiv 2505.20819).
- ``reverse``: exact restore from the base; removal of top singular components (training-free reversal);
  removal of suspected records by re-editing them towards their true targets or by fine-tuning the located
  layers on generic data.
- ``api``: ``erase`` and ``inspect_edits``, which write the output folder and its manifest.

This package sits above the pipeline stages: it may import ``models``, ``data``, ``edit``, ``finetune``,
``evaluate``, :mod:`editdecay.artifacts` (the output folder's manifest), :mod:`editdecay.stats` (the success
threshold) and ``util``, never ``report`` or ``experiment``.
"""
