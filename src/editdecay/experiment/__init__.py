"""Experiments: grid configs -> content-addressed stage graphs -> a resumable SQLite results store.

``grid`` (YAML -> runs -> stage graph, cost estimates), ``stages`` (what each stage kind runs), ``store``
(the SQLite results store), ``runner`` (local execution), ``ray_backend`` (execution on a Ray cluster).

May import: every pipeline stage below it (models, data, edit, finetune, evaluate), :mod:`editdecay.util`
and :mod:`editdecay.errors`; never report, commands or api. Known exception, to go in the issue-14
restructure: ``runner`` and ``ray_backend`` import each other (the backend should depend on execution only).
"""
