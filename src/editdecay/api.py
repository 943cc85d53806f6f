"""The Python API: what the CLI calls and what users import.

    from editdecay import api
    model, tok = api.load_model("smollm2-135m")
    records = api.load_edit_records("counterfact", n=20)
    result = api.edit(model, tok, records, method="memit")
    scores = api.evaluate_edits(model, tok, records)

Each name is imported lazily from the package of its pipeline stage, so importing this module is cheap.
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
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'editdecay.api' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
