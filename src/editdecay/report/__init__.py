"""Reports from a results store: the study's tables, statistics, figures and findings (see report.api).

``load`` (the store -> typed results, plain SQL), ``tables``, ``findings``, ``plots``, ``render`` (HTML,
Markdown, CSV, LaTeX, text). The report reads only the store: the analyses that need artifacts (per-layer
weight change, target frequency, activation shift) are computed by :mod:`editdecay.analyze` and written into
the store by ``editdecay analyze``; a store without them shows those figures as skipped.

May import: :mod:`editdecay.util`, :mod:`editdecay.errors`, :mod:`editdecay.stats`, :mod:`editdecay.groups`
(the four groups, as the store holds them); never models, data, artifacts, analyze, experiment (it reads the
store with plain SQL), commands or api.
"""
