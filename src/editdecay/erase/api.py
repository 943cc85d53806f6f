"""`inspect_edits` (report only) and `erase` (model folder + manifest): what was found and what was changed.

Modes, picked by what the caller has:

- ``base`` given: locate from ΔW, restore the changed parameters exactly (bit-identical to the base).
- ``records`` given, no base: remove the suspected records on ``layers`` (given, or located weights-only)
  with ``strategy`` ``reedit`` (edit back to the true targets), ``project`` (remove the keys' new directions)
  or ``finetune`` (full fine-tuning of those layers' MLP on generic data for ``budget_steps`` steps).
- nothing but the model: locate weights-only, trace the objects of the top singular directions, remove them.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editdecay.artifacts import write_erase_manifest
from editdecay.erase import locate, reverse, trace
from editdecay.errors import ConfigError, ModelError
from editdecay.models.arch import get_adapter

STRATEGIES = ("reedit", "project", "finetune", "svd")


def _load(name_or_path: str | os.PathLike | tuple[nn.Module, Any]) -> tuple[nn.Module, Any, str]:
    if isinstance(name_or_path, tuple):
        model, tok = name_or_path
        return model, tok, type(model).__name__
    from editdecay.models.registry import load_model

    model, tok = load_model(name_or_path)
    return model, tok, str(name_or_path)


def _direction_rows(reader: trace.DirectionReader, model: nn.Module, adapter, layer: int,
                    matrix: torch.Tensor, k: int, top: int = 5) -> list[dict[str, Any]]:
    u, s, _ = reverse.top_components(matrix, k)
    return [d.to_dict() for d in trace.trace_directions(reader, layer, u, s, top=top)]


def inspect_edits(
    model: str | os.PathLike | tuple[nn.Module, Any],
    base: str | os.PathLike | tuple[nn.Module, Any] | None = None,
    out: str | os.PathLike | None = None,
    *,
    trace_k: int | None = None,
    trace_mode: str = "forward",
    threshold: float = locate.DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """Per-layer scores, ``located_layers``, the changed matrices (with a base) and the traced objects.

    ``trace_k``: singular directions read per located layer (default: the rank of ΔW with a base, capped at
    20; the number of outlier singular values without one). Writes ``out`` (JSON) when given.
    """
    from editdecay.util.io import atomic_write_json

    t0 = time.perf_counter()
    m, tok, label = _load(model)
    adapter = get_adapter(m)
    n_layers = adapter.num_layers(m)
    report: dict[str, Any] = {"stage": "inspect-edits", "model": label}
    reader = trace.DirectionReader(m, tok, adapter, mode=trace_mode)
    traced: list[dict[str, Any]] = []
    if base is not None:
        b, _, base_label = _load(base)
        changes = locate.diff_changes(m, b, adapter)
        report.update(mode="diff", base=base_label, layers=locate.layer_scores_from_changes(changes, n_layers),
                      changes=[c.to_dict() for c in changes])
        report["located_layers"] = sorted({c.layer for c in changes if c.layer is not None})
        report["non_layer_changes"] = [c.name for c in changes if c.layer is None]
        for c in changes:
            if c.is_rewrite and c.rank:
                delta = adapter.as_out_in(dict(m.named_parameters())[c.name].detach().double()
                                          - dict(b.named_parameters())[c.name].detach().double())
                traced += _direction_rows(reader, m, adapter, c.layer, delta, min(trace_k or c.rank, c.rank, 20))
    else:
        scores = locate.weights_only_scores(m, adapter, threshold=threshold)
        report.update(mode="weights", base=None, layers=scores["layers"], statistic=scores["statistic"],
                      threshold=threshold, location_note=locate.WEIGHTS_ONLY_NOTE)
        report["located_layers"] = scores["located_layers"]
        for row in scores["layers"]:
            if row["layer"] in scores["located_layers"]:
                k = trace_k if trace_k is not None else max(1, row["n_outliers"])
                traced += _direction_rows(reader, m, adapter, row["layer"],
                                          locate.rewrite_matrix(m, adapter, row["layer"]), k)
    report["traced"] = traced
    report["traced_objects"] = sorted({d["tokens"][0].strip() for d in traced})
    report["seconds"] = time.perf_counter() - t0
    if out is not None:
        atomic_write_json(out, report)
    return report


def _holding(model: nn.Module, tok: Any, records: list) -> list[dict[str, Any]]:
    from editdecay.evaluate.api import evaluate_edits

    return evaluate_edits(model, tok, records)["records"]


def _counts(before: list[dict], after: list[dict]) -> dict[str, Any]:
    """ES per record ≤ the success threshold (0.5) -> erased. Counts over all records and over those that held."""
    from editdecay.stats import SUCCESS_THRESHOLD

    held = [b["efficacy"] > SUCCESS_THRESHOLD for b in before]
    now = [a["efficacy"] > SUCCESS_THRESHOLD for a in after]
    return {
        "n_records": len(after),
        "held_before": int(sum(held)),
        "erased": int(sum(not x for x in now)),
        "still_holding": int(sum(now)),
        "erased_of_held": int(sum(h and not x for h, x in zip(held, now, strict=True))),
        "per_record": [{"case_id": a["case_id"], "efficacy_before": b["efficacy"], "efficacy_after": a["efficacy"]}
                       for b, a in zip(before, after, strict=True)],
    }


def erase(
    model: str | os.PathLike,
    out_dir: str | os.PathLike,
    base: str | os.PathLike | None = None,
    records: str | os.PathLike | None = None,
    layers: list[int] | None = None,
    budget_steps: int | None = None,
    strategy: str | None = None,
    *,
    downstream_limit: int = 0,
    threshold: float = locate.DEFAULT_THRESHOLD,
    overwrite: bool = False,
    progress: bool = False,
    finetune_data: str = "commonsense",
) -> dict[str, Any]:
    """Find and remove edits; write ``out_dir`` (model folder + ``manifest.json``) and return the manifest."""
    from editdecay.evaluate.api import evaluate_downstream, load_records_arg
    from editdecay.util.io import atomic_dir

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; pass --overwrite to replace it")
    if strategy is not None and strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if budget_steps is not None and budget_steps < 1:
        raise ConfigError(f"--budget-steps {budget_steps}: must be at least 1")
    t0 = time.perf_counter()
    m, tok, label = _load(model)
    adapter = get_adapter(m)
    recs = load_records_arg(records) if records is not None else None
    manifest: dict[str, Any] = {"stage": "erase", "model": label, "base": str(base) if base else None,
                                "records_source": str(records) if records else None}
    before = _holding(m, tok, recs) if recs else None
    down_before = evaluate_downstream(m, tok, limit=downstream_limit) if downstream_limit else None

    if base is not None:
        if strategy not in (None, "restore"):
            raise ConfigError("with --base the edits are restored exactly; --strategy does not apply")
        b, _, _ = _load(base)
        changes = locate.diff_changes(m, b, adapter)
        restored = reverse.restore_exact(m, b, changes)
        theirs = dict(b.named_parameters())
        identical = all(torch.equal(p, theirs[n]) for n, p in m.named_parameters())
        manifest.update(mode="diff", strategy="restore", changes=[c.to_dict() for c in changes], restored=restored,
                        bit_identical=identical,
                        located_layers=sorted({c.layer for c in changes if c.layer is not None}))
    else:
        if layers is None:
            scores = locate.weights_only_scores(m, adapter, threshold=threshold)
            located = scores["located_layers"]
            manifest.update(layer_scores=scores["layers"], statistic=scores["statistic"],
                            location_note=locate.WEIGHTS_ONLY_NOTE)
        else:
            located = sorted(layers)
        manifest["located_layers"] = located
        strategy = strategy or ("reedit" if recs else "svd")
        if strategy != "svd" and not recs:
            raise ConfigError(f"--strategy {strategy} needs --records (the suspected edits)")
        if not located:
            raise ModelError("no edited layer was located; give --layers to say where to remove the edits")
        manifest.update(mode="records" if recs else "weights", strategy=strategy)
        if strategy == "svd":
            ks = {layer: _outliers(m, adapter, layer, scores if layers is None else None) for layer in located}
            reader = trace.DirectionReader(m, tok, adapter)
            traced = [d for layer, k in ks.items() if k
                      for d in _direction_rows(reader, m, adapter, layer, locate.rewrite_matrix(m, adapter, layer), k)]
            manifest["removed_sigma"] = reverse.remove_top_components(m, adapter, ks)
            manifest["traced"] = traced
            manifest["traced_objects"] = sorted({d["tokens"][0].strip() for d in traced})
            if not recs:  # traced edits: a removed direction whose object the layer still promotes holds
                after_reader = trace.DirectionReader(m, tok, adapter)
                left = {t for layer, k in ks.items() if k for d in
                        _direction_rows(after_reader, m, adapter, layer, locate.rewrite_matrix(m, adapter, layer), k)
                        for t in d["token_ids"][:1]}
                manifest["still_holding"] = sum(d["token_ids"][0] in left for d in traced)
                manifest["erased"] = len(traced) - manifest["still_holding"]
        elif strategy == "reedit":
            overrides_steps = budget_steps
            manifest["reedit"] = reverse.reedit_true(m, tok, recs, located, str(records), progress=progress,
                                                     max_steps=overrides_steps)
        elif strategy == "project":
            manifest["projected"] = reverse.project_out_keys(m, tok, adapter, recs, located)
        else:
            work = out.with_name(out.name + ".work")
            m, ft = reverse.finetune_layers(m, tok, located, budget_steps or 50, work, data=finetune_data,
                                            progress=progress)
            shutil.rmtree(work, ignore_errors=True)
            manifest["finetune"] = {k: ft[k] for k in ("type", "layers", "modules", "steps", "n_trained",
                                                       "final_loss", "data")}
    if recs:
        manifest.update(_counts(before, _holding(m, tok, recs)))
    if downstream_limit:
        after = evaluate_downstream(m, tok, limit=downstream_limit)
        manifest["downstream"] = {"before": down_before["mean"], "after": after["mean"],
                                  "cost": down_before["mean"] - after["mean"], "limit": downstream_limit,
                                  "tasks_before": down_before["tasks"], "tasks_after": after["tasks"]}
    manifest["seconds"] = time.perf_counter() - t0
    with atomic_dir(out) as tmp:
        m.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_erase_manifest(tmp, manifest)
    return manifest


def _outliers(model: nn.Module, adapter, layer: int, scores: dict[str, Any] | None) -> int:
    """How many top singular components of a located layer to remove: its outlier count (at least 1)."""
    if scores is not None:
        for row in scores["layers"]:
            if row["layer"] == layer:
                return max(1, row["n_outliers"])
    return max(1, locate.outlier_count(model, adapter, layer))


__all__ = ["erase", "inspect_edits", "STRATEGIES"]
