"""Reports from a results store: the study's tables, statistics, figures and findings (see report.api).

``load`` (the store -> typed results, plain SQL), ``tables``, ``stats``, ``findings``, ``plots``, ``render``
(HTML, Markdown, CSV, LaTeX, text), ``shift`` (activation-shift analysis).

May import: :mod:`editdecay.util`, :mod:`editdecay.errors`, ``evaluate.decay`` (the decay metrics) and,
for the analyses not yet written to the store (``plots.layer_change``, ``plots.survival_vs_frequency``,
``shift``), models and data; never experiment (it reads the store with plain SQL), commands or api.
"""
