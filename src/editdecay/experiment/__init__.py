"""Experiments: grid configs -> content-addressed stage graphs -> a resumable SQLite results store.

One way down: each module imports only modules before it in this list: ``store_schema`` (the store's tables,
version and the upgrade of older files) -> ``store`` (the SQLite results store; the stage kinds) ; ``facts`` (model facts from config.json) -> ``schema`` (YAML -> a validated
Grid, the settings of each run) -> ``plan`` (runs -> StageSpec graph, Plan) -> ``cost`` (time, memory and disk
estimates) ; ``stages`` (what each stage kind computes) -> ``execute`` (run one stage, the stage-function table) -> ``backends/`` (``local``,
``ray``: where stages run) -> ``runner`` (run_grid: the driver loop) ; ``export`` (a stage as a model folder);
``grid`` re-exports load_grid/parse_grid/expand for users.

May import: every pipeline stage below it (models, data, edit, preserve — its strategy names —, finetune,
evaluate), :mod:`editdecay.artifacts`,
:mod:`editdecay.groups` (the four groups, shared with the report), :mod:`editdecay.util` and
:mod:`editdecay.errors`; never report, commands or api.
"""
