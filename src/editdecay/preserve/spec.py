"""What a preserve strategy needs to know about an edit, read once from the edit folder's manifest.

The rewritten projections are the manifest's ``deltas`` keys (full parameter names of the weights the edit
changed). A manifest written without ``deltas`` (hand-made, or an older edit) gets the weight each edited layer's
rewrite module holds — exactly what MEMIT/AlphaEdit rewrite — and says so in ``rewritten_from``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from editdecay.artifacts import MANIFEST, edited_layers, read_edit_manifest
from editdecay.data.records import EditRecord, records_from_manifest
from editdecay.errors import DataError
from editdecay.models.arch import get_adapter
from editdecay.util.io import stable_hash


@dataclass
class EditSpec:
    """An edit as the preserve strategies see it."""

    source: str  # the manifest's path (errors name it)
    method: str
    records: list[EditRecord]
    layers: list[int]
    rewritten: dict[str, int]  # parameter name of each rewritten weight -> its layer
    rewritten_from: str  # "deltas" | "layers"
    templates: list[list[str]] | None
    hparams: dict[str, Any] | None
    base_model: str | None

    @property
    def modules(self) -> list[str]:
        """Module names of the rewritten projections (parameter names without ``.weight``)."""
        return [name.rsplit(".", 1)[0] for name in self.rewritten]

    def fingerprint(self) -> str:
        """What identifies the edit for a run hash: records, rewritten weights, templates, method, settings."""
        return stable_hash({"records": [r.to_dict() for r in self.records], "rewritten": sorted(self.rewritten),
                            "templates": self.templates, "method": self.method, "hparams": self.hparams})

    def need(self, what: str, value: Any) -> Any:
        if value is None or value == []:
            raise DataError(self.source, f"the edit manifest has no {what}; the preserve strategy needs it "
                            "(write the edit with `editdecay edit`)", field=what)
        return value

    def requests(self) -> list:
        from editdecay.edit.prompts import Request

        return [Request.from_record(r) for r in self.need("records", self.records)]


def load_edit_spec(edit_dir: str | os.PathLike, model: nn.Module) -> EditSpec:
    """Read ``edit_dir/manifest.json`` and check its rewritten weights against ``model``'s parameters."""
    path = Path(edit_dir) / MANIFEST
    manifest = read_edit_manifest(edit_dir, missing="no edit manifest here: --preserve-edits needs an edit folder "
                                  "from `editdecay edit`")
    layers = manifest["layers"]
    if not layers:
        raise DataError(str(path), "expected a non-empty list of integer layer indices", field="layers")
    records = records_from_manifest({"records": manifest.get("records") or []}, path)
    adapter = get_adapter(model)
    by_name = {f"{adapter.rewrite_name(i)}.weight": i for i in range(adapter.num_layers(model))}
    params = dict(model.named_parameters())
    deltas = manifest.get("deltas")
    if isinstance(deltas, dict) and deltas:
        names, origin = list(deltas), "deltas"
    else:
        names, origin = [f"{adapter.rewrite_name(i)}.weight" for i in layers], "layers"
    rewritten: dict[str, int] = {}
    for name in names:
        if name not in params:
            raise DataError(str(path), f"rewritten weight {name!r} is not a parameter of this model", field="deltas")
        if name not in by_name:
            raise DataError(str(path), f"{name!r} is not a rewrite projection of any layer of this model "
                            f"(expected names like {next(iter(by_name))!r})", field="deltas")
        rewritten[name] = by_name[name]
    templates = manifest.get("context_templates")
    if templates is not None and (not isinstance(templates, list) or not templates or templates[0] != ["{}"]):
        raise DataError(str(path), "expected [[\"{}\"], [...], ...] (the bare template first)", field="context_templates")
    return EditSpec(source=str(path), method=str(manifest.get("method", "memit")), records=records,
                    layers=edited_layers(manifest), rewritten=rewritten, rewritten_from=origin, templates=templates,
                    hparams=manifest.get("hparams"),
                    base_model=manifest.get("base_model_path") or manifest.get("base_model"))
