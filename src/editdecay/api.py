"""The Python API: what the CLI calls and what users import.

    from editdecay import api
    model, tok = api.load_model("smollm2-135m")
    records = api.load_edit_records("counterfact", n=20)
    result = api.edit(model, tok, records, method="memit")
    scores = api.evaluate_edits(model, tok, records)

Each name is imported lazily from the package of its pipeline stage, so importing this module is cheap. The CLI
commands (:mod:`editdecay.commands`) reach the stages only through this module: the names after "the CLI's"
below are the settings and helpers they need besides the user-facing functions.

May import: every package below it (lazily, by name); only :mod:`editdecay.commands` and users import it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # models / data
    "load_model": "editdecay.models.registry",
    "resolve_model": "editdecay.models.registry",
    "get_adapter": "editdecay.models.arch",
    "load_edit_records": "editdecay.data.records",
    "EditRecord": "editdecay.data.records",
    # edit
    "edit": "editdecay.edit.api",
    "edit_to_folder": "editdecay.edit.api",
    # evaluate
    "evaluate_edits": "editdecay.evaluate.api",
    "evaluate_downstream": "editdecay.evaluate.api",
    "evaluate_model": "editdecay.evaluate.api",
    "compare": "editdecay.evaluate.decay",
    "seed_comparison": "editdecay.evaluate.decay",
    # finetune
    "finetune": "editdecay.finetune.api",
    "FinetuneConfig": "editdecay.finetune.config",
    # experiments and reports
    "run_grid": "editdecay.experiment.runner",
    "export_model": "editdecay.experiment.export",
    "load_grid": "editdecay.experiment.schema",
    "write_report": "editdecay.report.api",
    # analyses of artifacts (`editdecay analyze` writes them into a store for the report)
    "activation_shift": "editdecay.analyze.shift",
    "layer_change": "editdecay.analyze.weights",
    "target_frequency": "editdecay.analyze.frequency",
    # erase: locate, trace and remove edits
    "erase": "editdecay.erase.api",
    "inspect_edits": "editdecay.erase.api",
    # the CLI's: models and devices
    "model_status": "editdecay.models.registry",
    "convert_registered": "editdecay.models.registry",
    "install_package": "editdecay.models.registry",
    "editdecay_home": "editdecay.models.registry",
    "add_device_args": "editdecay.models.device",
    "apply_device_args": "editdecay.models.device",
    "configure_threads": "editdecay.models.device",
    "resolve_device": "editdecay.models.device",
    "DEVICE_ENV": "editdecay.models.device",
    # the CLI's: records, edit settings and caches
    "LoadReport": "editdecay.data.records",
    "load_records_arg": "editdecay.evaluate.api",
    "method_names": "editdecay.edit.registry",
    "parse_layers": "editdecay.edit.hparams",
    "resolve_hparams": "editdecay.edit.hparams",
    "StatsCache": "editdecay.edit.stats",
    "ERASE_THRESHOLD": "editdecay.erase.locate:DEFAULT_THRESHOLD",
    # the CLI's: grids, stores, reports and analyses
    "plan_grid": "editdecay.experiment.runner",
    "estimate_plan": "editdecay.experiment.cost",
    "estimate_seconds": "editdecay.experiment.cost",
    "check_plan_resources": "editdecay.experiment.cost",
    "by_kind": "editdecay.experiment.cost",
    "stage_dtype": "editdecay.experiment.cost",
    "MeasuredCosts": "editdecay.experiment.measured",
    "measured_plan_seconds": "editdecay.experiment.measured",
    "Store": "editdecay.experiment.store",
    "report_text": "editdecay.report.api",
    "format_shift": "editdecay.analyze.shift",
    "model_readable": "editdecay.analyze.weights:readable",
    "edit_change": "editdecay.analyze.weights",
    "finetune_change": "editdecay.analyze.weights",
    "default_corpus_loader": "editdecay.analyze.frequency",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'editdecay.api' has no attribute {name!r}")
    module, _, attr = _EXPORTS[name].partition(":")
    return getattr(importlib.import_module(module), attr or name)
