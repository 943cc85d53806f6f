"""Materialise the model of any edit folder, fine-tune folder, grid stage or run as a plain model folder.

Stages keep only what differs from their input (deltas, adapters); ``export`` is how a user gets the weights
back: the folder it writes loads with ``AutoModelForCausalLM.from_pretrained`` and nothing else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from editdecay.errors import ConfigError

GROUP_CHOICES = ("M", "M_ft", "M_ed", "M_ed_ft")


def resolve_source(source: str, store: str | os.PathLike | None = None, group: str = "M_ed_ft") -> str:
    """A folder / registered name as it is; a stage id or run id looked up in ``store``."""
    path = Path(source).expanduser()
    if path.exists():
        return str(path)
    if store is None:
        if source.startswith(("run-", "edit-", "finetune-", "evaluate-", "base-")):
            raise ConfigError(f"{source!r} looks like a stage or run id: pass --store STORE.db to look it up")
        return source  # a registered model name or hub id: load_model decides
    from editdecay.experiment.store import Store

    if group not in GROUP_CHOICES:
        raise ConfigError(f"--group {group!r}: allowed: {', '.join(GROUP_CHOICES)}")
    with Store(store) as db:
        if source.startswith("run-"):
            rows = db.query("SELECT eval_stage_id FROM run_groups WHERE run_id=? AND grp=?", (source, group))
            if not rows:
                raise ConfigError(f"{store}: no run {source!r} with a group {group!r}")
            source = rows[0]["eval_stage_id"]
        rows = db.query("SELECT kind, status, artifact, deps_json FROM stages WHERE stage_id=?", (source,))
        if not rows:
            raise ConfigError(f"{store}: no stage or run {source!r}")
        row = rows[0]
        if row["kind"] == "evaluate":  # the model an evaluation scored
            model_stage = json.loads(row["deps_json"] or "{}").get("model")
            rows = db.query("SELECT kind, status, artifact, deps_json FROM stages WHERE stage_id=?", (model_stage,))
            row = rows[0]
        if row["kind"] not in ("base", "edit", "finetune"):
            raise ConfigError(f"{store}: stage {source!r} is a {row['kind']} stage: it holds no model")
        if row["status"] != "done":
            raise ConfigError(f"{store}: stage {source!r} is {row['status']}: run the grid to finish it first")
    from editdecay.artifacts import marker_model

    return marker_model(Path(row["artifact"]))


def export_model(source: str, out: str | os.PathLike, *, store: str | os.PathLike | None = None,
                 group: str = "M_ed_ft", overwrite: bool = False, dtype: str | None = None) -> Path:
    """Write the model ``source`` stands for to ``out`` (safetensors + tokenizer), atomically."""
    from editdecay.models.registry import load_model
    from editdecay.util.io import atomic_dir

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; pass --overwrite to replace it")
    model, tok = load_model(resolve_source(source, store, group), device="cpu", dtype=dtype)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out
