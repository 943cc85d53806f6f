"""Public evaluation API: edit metrics, downstream accuracy, and the evaluation JSON of docs/design.md."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from editdecay.data.records import EditRecord, load_edit_records
from editdecay.errors import ConfigError, DataError


def evaluate_edits(
    model: nn.Module,
    tok: Any,
    records: Sequence[EditRecord],
    batch_size: int = 32,
    progress: bool = False,
    fluency: bool = False,
) -> dict[str, Any]:
    """Edit metrics of ``model`` on ``records``: ``{"summary": {...means, n_records}, "records": [per record]}``.

    ``fluency=True`` adds ROME's n-gram entropy of greedy generations for records with generation prompts.
    """
    from editdecay.evaluate.edits import fluency as fluency_fn
    from editdecay.evaluate.edits import record_metrics, summarize

    if not records:
        raise DataError("<records>", "no records to evaluate")
    rows = record_metrics(model, tok, records, batch_size=batch_size, progress=progress)
    if fluency:
        ent = fluency_fn(model, tok, records)
        for row in rows:
            if row["case_id"] in ent:
                row["fluency"] = ent[row["case_id"]]
    return {"summary": summarize(rows), "records": rows}


def evaluate_downstream(
    model: nn.Module,
    tok: Any,
    tasks: str | Sequence[str] = "commonsense",
    limit: int | None = None,
    seed: int = 0,
    mode: str = "loglik",
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Commonsense accuracy per task and their mean: ``{"tasks": {task: acc}, "mean", "n": {task: n}, "mode"}``."""
    from editdecay.evaluate.downstream import evaluate_commonsense

    return evaluate_commonsense(model, tok, tasks=tasks, limit=limit, seed=seed, mode=mode,
                                batch_size=batch_size, progress=progress)


def load_records_arg(value: str | os.PathLike, n: int | None = None) -> list[EditRecord]:
    """Records from a data name (``counterfact``, ``zsre``), a records file, or an edit folder's manifest.

    A manifest (``manifest.json``, or the edit folder holding it) yields exactly its ``records`` (EditRecord
    dicts), in order; ``n`` keeps the first n.
    """
    from editdecay.artifacts import MANIFEST, read_manifest
    from editdecay.data.records import records_from_manifest

    path = Path(value)
    if path.is_dir() and (path / MANIFEST).exists():
        path = path / MANIFEST
    if path.name == MANIFEST or (path.suffix == ".json" and _looks_like_manifest(path)):
        manifest = read_manifest(path)
        if "records" not in manifest:
            raise DataError(str(path), "manifest has no 'records' list", field="records")
        if not isinstance(manifest["records"], list) or not manifest["records"]:
            raise DataError(str(path), "manifest 'records' must be a non-empty list", field="records")
        records = records_from_manifest(manifest, path)
        return records[:n] if n is not None else records
    return load_edit_records(value, n=n)


def _kept_scores(folder: str | os.PathLike, model: nn.Module, records: Sequence[EditRecord]
                 ) -> tuple[dict[str, Any], str] | None:
    """The fine-tune folder's last tracked per-record scores when they are exactly what scoring ``records`` on
    ``model`` would compute (same records, dtype and device kind; the tracker scored the same weights, with any
    adapter unmerged), with the file they came from; else None."""
    from editdecay.artifacts import EDIT_SCORES
    from editdecay.data.records import records_hash
    from editdecay.util.io import read_json

    path = Path(folder) / EDIT_SCORES
    if not path.is_file():
        return None
    kept = read_json(path)
    param = next(model.parameters())
    for key, value in (("records_hash", records_hash(list(records))), ("device", param.device.type),
                       ("dtype", str(param.dtype).replace("torch.", ""))):
        if key not in kept:
            raise DataError(str(path), f"no {key!r}: not a file editdecay wrote; delete it to score anew", field=key)
        if kept[key] != value:
            return None
    if not isinstance(kept.get("records"), list) or len(kept["records"]) != len(records):
        raise DataError(str(path), f"'records' must list {len(records)} per-record scores", field="records")
    if not isinstance(kept.get("summary"), dict):
        raise DataError(str(path), "'summary' must be the scores' summary object", field="summary")
    return {"summary": kept["summary"], "records": kept["records"]}, str(path)


def _looks_like_manifest(path: Path) -> bool:
    """A JSON object file whose first bytes are an object with a "stage" key (cheap check, no full parse)."""
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(4096).lstrip()
    except OSError:
        return False
    return head.startswith("{") and '"stage"' in head


def evaluate_model(
    model_name_or_path: str | os.PathLike | tuple[nn.Module, Any],
    data: str | None = None,
    records: str | os.PathLike | Sequence[EditRecord] | None = None,
    n: int | None = None,
    downstream: str | Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    mode: str = "loglik",
    batch_size: int = 32,
    progress: bool = True,
    fluency: bool = False,
    perplexity_text: str | os.PathLike | None = None,
    perplexity_tokens: int | None = 4096,
    *,
    device: Any = None,
    dtype: Any = None,
    reuse_scores: bool = True,
) -> dict[str, Any]:
    """The evaluation JSON: ``{"model", "data", "summary", "records", "downstream", "timings", "versions"}``.

    ``records`` (a file, a manifest, or EditRecords) takes precedence over ``data`` (a named data set);
    ``downstream`` (e.g. ``"commonsense"``) adds per-task accuracies; ``perplexity_text`` (a raw-text corpus
    name or file) adds ``perplexity`` on its first ``perplexity_tokens`` tokens. At least one must be given.
    ``device``/``dtype``: where and in what precision a named model is loaded (None: CUDA when present, float32);
    scores are computed from float32 log-probabilities either way. ``reuse_scores``: a fine-tune folder whose
    tracker scored these very records at its last step, in this dtype on this kind of device, keeps those
    per-record scores (``edit_scores.json``); they are taken instead of scoring the same weights again
    (``"edit_scores_from"`` names the file). False scores anew.
    """
    from editdecay.util.env import library_versions

    if data is None and records is None and not downstream and perplexity_text is None:
        raise ConfigError("nothing to evaluate: give data/records (edit metrics), downstream and/or perplexity")
    if isinstance(model_name_or_path, tuple):
        model, tok = model_name_or_path
        model_label = type(model).__name__
    else:
        from editdecay.models.registry import load_model

        model, tok = load_model(model_name_or_path, device=device, dtype=dtype)
        model_label = str(model_name_or_path)
    out: dict[str, Any] = {"model": model_label, "data": data,
                           "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
    timings: dict[str, float] = {}
    if records is not None or data is not None:
        if records is None:
            recs = load_records_arg(data, n=n)  # type: ignore[arg-type]
        elif isinstance(records, (str, os.PathLike)):
            recs = load_records_arg(records, n=n)
            out["records_source"] = str(records)
        else:
            recs = list(records)[:n] if n is not None else list(records)
        if data is not None and records is not None and data in ("counterfact", "zsre"):
            wrong = [r for r in recs if r.dataset != data]
            if wrong:
                raise DataError(str(records) if isinstance(records, (str, os.PathLike)) else "<records>",
                                f"--data {data} but record {wrong[0].case_id!r} (and {len(wrong) - 1} more) is "
                                f"from data set {wrong[0].dataset!r}", field="dataset")
        if data is None:
            out["data"] = recs[0].dataset
        start = time.perf_counter()
        kept = (_kept_scores(model_name_or_path, model, recs)
                if reuse_scores and not fluency and not isinstance(model_name_or_path, tuple) else None)
        if kept is not None:
            result, out["edit_scores_from"] = kept
        else:
            result = evaluate_edits(model, tok, recs, batch_size=batch_size, progress=progress, fluency=fluency)
        timings["edits_s"] = time.perf_counter() - start
        out["summary"], out["records"] = result["summary"], result["records"]
    if downstream:
        start = time.perf_counter()
        out["downstream"] = evaluate_downstream(model, tok, tasks=downstream, limit=limit, seed=seed, mode=mode,
                                                batch_size=max(1, batch_size // 2), progress=progress)
        timings["downstream_s"] = time.perf_counter() - start
    if perplexity_text is not None:
        from editdecay.evaluate.perplexity import perplexity

        start = time.perf_counter()
        out["perplexity"] = perplexity(model, tok, perplexity_text, max_tokens=perplexity_tokens, progress=progress)
        timings["perplexity_s"] = time.perf_counter() - start
    out["timings"] = timings
    out["versions"] = library_versions()
    return out
